"""HVP and per-example-gradient plumbing against dense autograd and finite differences.

The oracles are float64: ``torch.func.hessian`` of the loss as a function of the flat
parameter vector (:func:`dense_hessian`), central finite differences of gradients, and a
Python loop of one backward pass per example. The tiny models are also imported by
``tests/test_sharpness.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustkit.evaluate.curvature import (
    Batches,
    FlatModel,
    LossHessian,
    PerExampleGradients,
    as_batches,
    dense_hessian,
    eval_mode,
    per_example_log_prob_sq_norms_loop,
)
from tests.tolerances import ATOL_EXACT, ATOL_FD, RTOL_EXACT, RTOL_FD

NUM_FEATURES = 6
NUM_CLASSES = 3


def _init(model: nn.Module, seed: int, scale: float = 0.7) -> nn.Module:
    """Overwrite every parameter from a local generator (no global seeding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tiny_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """6 -> 16 -> 16 -> 3 tanh MLP: 435 parameters, an indefinite Hessian at random weights."""
    model = nn.Sequential(
        nn.Linear(NUM_FEATURES, 16),
        nn.Tanh(),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Linear(16, NUM_CLASSES),
    )
    return _init(model, seed).to(dtype)


def tiny_bn_net(seed: int = 1, dtype: torch.dtype = torch.float64) -> nn.Module:
    """Linear -> BatchNorm1d -> tanh -> linear, with non-trivial running statistics.

    Returned in *training* mode, as a caller might hold it: the metrics must switch it to
    eval mode (running statistics) and back.
    """
    model = nn.Sequential(
        nn.Linear(NUM_FEATURES, 12),
        nn.BatchNorm1d(12),
        nn.Tanh(),
        nn.Linear(12, NUM_CLASSES),
    )
    _init(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.copy_(0.3 * torch.randn(12, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(12, generator=g))
    return model.to(dtype).train()


def tiny_data(
    n: int = 60, seed: int = 2, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, NUM_FEATURES, generator=g, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x, y


def snapshot(model: nn.Module) -> dict:
    """Everything about a model a metric must leave untouched."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "dtype": next(model.parameters()).dtype,
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert after["dtype"] == before["dtype"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


MODELS = {"mlp": tiny_mlp, "bn": tiny_bn_net}


# --- data handling ---------------------------------------------------------------------------


def test_as_batches_splits_a_tensor_pair() -> None:
    x, y = tiny_data(10)
    batches = as_batches((x, y), batch_size=4)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert batches.num_examples == 10
    assert as_batches((x, y)).num_examples == 10 and len(as_batches((x, y))) == 1


def test_as_batches_keeps_an_iterable_and_can_be_reread() -> None:
    x, y = tiny_data(10)
    batches = as_batches((xb, yb) for xb, yb in zip(x.split(3), y.split(3), strict=True))
    assert len(list(batches)) == len(list(batches)) == 4
    assert batches.num_examples == 10


@pytest.mark.parametrize(
    "data, batch_size, match",
    [
        ([], None, "no data"),
        ([(torch.zeros(3, 2), torch.zeros(2))], None, "same non-zero batch size"),
        ([torch.zeros(3)], None, r"not an \(x, y\) pair"),
        ([(torch.zeros(3, 2), torch.zeros(3))], 2, "only to an"),
        ((torch.zeros(3, 2), torch.zeros(2)), None, "3 examples"),
        ((torch.zeros(3, 2), torch.zeros(3)), 0, "positive int"),
    ],
)
def test_as_batches_rejects_bad_input(data, batch_size, match) -> None:
    with pytest.raises(ValueError, match=match):
        as_batches(data, batch_size)


def test_eval_mode_restores_mixed_modes() -> None:
    model = tiny_bn_net()
    model[1].eval()  # frozen BN inside a training model
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError
    assert [m.training for m in model.modules()] == before


def test_flat_model_only_covers_trainable_parameters() -> None:
    model = tiny_mlp()
    model[0].weight.requires_grad_(False)
    flat = FlatModel(model)
    assert flat.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)
    x, _ = tiny_data(5)
    out = flat(flat.unflatten(flat.theta), x)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=RTOL_EXACT, atol=ATOL_EXACT)


# --- Hessian-vector products -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hvp_matches_dense_hessian(name: str) -> None:
    model = MODELS[name]()
    x, y = tiny_data()
    before = snapshot(model)
    hessian = dense_hessian(model, F.cross_entropy, (x, y))
    op = LossHessian(model, F.cross_entropy, (x, y), batch_size=16)
    vectors = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    torch.testing.assert_close(op.matmat(vectors), hessian @ vectors, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hessian, hessian.T, rtol=RTOL_EXACT, atol=ATOL_EXACT)
    assert op.num_hvps == 3
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hvp_matches_central_finite_differences(name: str) -> None:
    """``Hv ~ (g(θ + hv) - g(θ - hv)) / 2h``, error O(h²)."""
    model = MODELS[name]()
    x, y = tiny_data()
    op = LossHessian(model, F.cross_entropy, (x, y), batch_size=25)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    v = v / v.norm()
    h = 1e-4
    _, g_plus = op.loss_and_gradient(op.flat.theta + h * v)
    _, g_minus = op.loss_and_gradient(op.flat.theta - h * v)
    torch.testing.assert_close(
        op.matvec(v), (g_plus - g_minus) / (2 * h), rtol=RTOL_FD, atol=ATOL_FD
    )


def test_gradient_matches_plain_autograd_in_eval_mode() -> None:
    model = tiny_bn_net()
    x, y = tiny_data()
    op = LossHessian(model, F.cross_entropy, (x, y), batch_size=7)
    loss, gradient = op.loss_and_gradient()
    reference = tiny_bn_net().eval()
    ref_loss = F.cross_entropy(reference(x), y)
    ref_grad = torch.autograd.grad(ref_loss, list(reference.parameters()))
    assert loss == pytest.approx(float(ref_loss.detach()), rel=RTOL_EXACT)
    torch.testing.assert_close(gradient, op.flat.flatten(ref_grad), rtol=1e-9, atol=ATOL_EXACT)


def test_batched_accumulation_equals_single_batch() -> None:
    """The mean loss over uneven batches (16, 16, 16, 12), weighted by |B| / N."""
    model = tiny_bn_net()
    x, y = tiny_data()
    whole = LossHessian(model, F.cross_entropy, (x, y))
    split = LossHessian(model, F.cross_entropy, (x, y), batch_size=16)
    assert len(split.batches) == 4
    v = torch.randn(whole.dim, 2, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    torch.testing.assert_close(split.matmat(v), whole.matmat(v), rtol=1e-10, atol=1e-13)
    (l1, g1), (l2, g2) = whole.loss_and_gradient(), split.loss_and_gradient()
    assert l1 == pytest.approx(l2, rel=RTOL_EXACT)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-13)


def test_float32_model_in_float64_matches_float64_model() -> None:
    x, y = tiny_data()
    op32 = LossHessian(
        tiny_mlp(dtype=torch.float32), F.cross_entropy, (x.float(), y), dtype=torch.float64
    )
    op64 = LossHessian(tiny_mlp(dtype=torch.float64), F.cross_entropy, (x, y))
    assert op32.dtype == torch.float64
    v = torch.randn(op64.dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    # Same weights up to float32 rounding of the parameters and inputs.
    torch.testing.assert_close(op32.matvec(v), op64.matvec(v), rtol=1e-5, atol=1e-6)


def test_float32_hvp_is_float32_and_close() -> None:
    x, y = tiny_data()
    op32 = LossHessian(tiny_bn_net(dtype=torch.float32), F.cross_entropy, (x.float(), y))
    op64 = LossHessian(tiny_bn_net(dtype=torch.float64), F.cross_entropy, (x, y))
    v = torch.randn(op64.dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    hv32 = op32.matvec(v.float())
    assert hv32.dtype == torch.float32
    torch.testing.assert_close(hv32.double(), op64.matvec(v), rtol=1e-4, atol=1e-5)


def test_loss_fn_must_return_a_scalar() -> None:
    def per_example(out, y):
        return F.cross_entropy(out, y, reduction="none")

    op = LossHessian(tiny_mlp(), per_example, tiny_data(8))
    with pytest.raises(ValueError, match="mean loss"):
        op.matvec(torch.zeros(op.dim, dtype=torch.float64))


def test_model_without_trainable_parameters_is_rejected() -> None:
    model = tiny_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        LossHessian(model, F.cross_entropy, tiny_data(8))


@pytest.mark.gpu
def test_hvp_on_gpu_matches_cpu() -> None:
    x, y = tiny_data()
    cpu = LossHessian(tiny_bn_net(), F.cross_entropy, (x, y), batch_size=16)
    gpu = LossHessian(tiny_bn_net().cuda(), F.cross_entropy, (x, y), batch_size=16)
    v = torch.randn(cpu.dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    torch.testing.assert_close(gpu.matvec(v.cuda()).cpu(), cpu.matvec(v), rtol=1e-9, atol=1e-12)


# --- per-example gradients -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_sq_norms_match_a_loop(name: str) -> None:
    model = MODELS[name]()
    x, y = tiny_data(12)
    before = snapshot(model)
    fast = PerExampleGradients(model).sq_norms(x, y)
    slow = per_example_log_prob_sq_norms_loop(model, x, y)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=ATOL_EXACT)
    assert_unchanged(model, before)


def test_per_example_gradients_equal_cross_entropy_gradients() -> None:
    """``∇ log p(y|x) = -∇ CE(f(x), y)``, checked against autograd on one example."""
    model = tiny_mlp()
    x, y = tiny_data(3)
    fast = PerExampleGradients(model).sq_norms(x, y)
    for n in range(3):
        loss = F.cross_entropy(model(x[n : n + 1]), y[n : n + 1])
        g = torch.autograd.grad(loss, list(model.parameters()))
        assert float(fast[n]) == pytest.approx(float(sum(t.pow(2).sum() for t in g)), rel=1e-10)


def test_batches_object_is_passed_through() -> None:
    batches = Batches([tiny_data(5)])
    assert as_batches(batches) is batches
