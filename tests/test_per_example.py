"""Closed-form per-example gradient norms (``layerwise``) against plain autograd, layer by layer.

The oracle is a float64 Python loop: one example at a time, the full parameter gradient of
``u . logits`` by ``torch.autograd.grad``, squared and summed. Every supported layer type is
covered with the options that change its gradient (stride, dilation, groups, padding, extra
dimensions, frozen or missing parameters), plus the structures the engine must refuse.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustkit.evaluate import per_example
from robustkit.evaluate.curvature import FlatModel, PerExampleGradients
from robustkit.evaluate.per_example import LayerwiseSqNorms, unsupported_reason
from robustkit.evaluate.sharpness import fisher_trace
from tests.tolerances import RTOL_EXACT

NUM_CLASSES = 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics from a local generator, float64, train mode."""
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.double().train()


class Sequence(nn.Module):
    """Linear layers on (batch, time, features) inputs, with a LayerNorm over features."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.norm(self.inp(x)))).mean(1)


def conv2d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),  # rewrites the BatchNorm output in place
        nn.Conv2d(6, 8, 3, stride=2, dilation=2, padding=2, groups=2, bias=False),
        nn.GroupNorm(2, 8),
        nn.Tanh(),
        nn.Conv2d(8, 8, (2, 3), padding="valid"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


def conv1d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(2, 5, 3, stride=2, padding=1),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Conv1d(5, 4, 2, dilation=2),
        nn.Flatten(),
        nn.Linear(4 * 4, NUM_CLASSES),
    )


def conv3d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 3, 2, stride=(1, 2, 1)),
        nn.BatchNorm3d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3 * 3, NUM_CLASSES),
    )


def mlp_bn() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, NUM_CLASSES, bias=False)
    )


CASES = {
    "conv2d": (conv2d_net, (3, 9, 9)),
    "conv1d": (conv1d_net, (2, 11)),
    "conv3d": (conv3d_net, (1, 4, 6, 4)),
    "mlp-bn": (mlp_bn, (5,)),
    "sequence": (Sequence, (5, 3)),
}


def _data(shape: tuple[int, ...], n: int = 7, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, *shape, generator=_gen(seed), dtype=torch.float64)


def _vectors(n: int, k: int, seed: int = 4) -> torch.Tensor:
    return torch.randn(n, k, NUM_CLASSES, generator=_gen(seed), dtype=torch.float64)


def loop_sq_norms(model: nn.Module, x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``||J_n^T u_{n,k}||^2`` one example and one vector at a time, by plain autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = torch.zeros(vectors.shape[:2], dtype=torch.float64)
    model.eval()
    for n in range(x.shape[0]):
        logits = model(x[n : n + 1])
        for k in range(vectors.shape[1]):
            grads = torch.autograd.grad(logits, params, vectors[n : n + 1, k], retain_graph=True)
            out[n, k] = sum(g.pow(2).sum() for g in grads)
    return out


@pytest.fixture(params=["offsets", "vmap"])
def conv_path(request, monkeypatch) -> str:
    """Every convolution through one of the two per-example weight-gradient paths."""
    limit = 10**9 if request.param == "offsets" else 0
    monkeypatch.setattr(per_example, "OFFSETS_MAX_POSITIONS", limit)
    return request.param


@pytest.mark.parametrize("name", sorted(CASES))
def test_layerwise_matches_autograd_per_example(name: str, conv_path: str) -> None:
    build, shape = CASES[name]
    model = _randomise(build(), seed=1)
    x, u = _data(shape), _vectors(7, 3)
    engine = LayerwiseSqNorms(FlatModel(model))
    fast = engine(x, lambda log_p: u)
    assert engine.checked
    assert model.training  # left as it was
    expected = loop_sq_norms(model, x, u)
    torch.testing.assert_close(fast, expected, rtol=RTOL_EXACT, atol=0)


def test_frozen_and_missing_parameters_are_left_out() -> None:
    model = _randomise(conv2d_net(), seed=2)
    model[0].bias.requires_grad_(False)  # frozen bias, trainable weight
    model[1].weight.requires_grad_(False)  # frozen BatchNorm scale
    for p in model[-1].parameters():  # a frozen layer
        p.requires_grad_(False)
    x, u = _data((3, 9, 9)), _vectors(7, 2)
    fast = LayerwiseSqNorms(FlatModel(model))(x, lambda log_p: u)
    torch.testing.assert_close(fast, loop_sq_norms(model, x, u), rtol=RTOL_EXACT, atol=0)


def test_small_chunks_give_the_same_norms(monkeypatch, conv_path: str) -> None:
    model = _randomise(conv2d_net(), seed=5)
    x, u = _data((3, 9, 9)), _vectors(7, 1)
    whole = LayerwiseSqNorms(FlatModel(model))(x, lambda log_p: u)
    monkeypatch.setattr(per_example, "CHUNK_ELEMENTS", 100)  # a few examples per chunk
    chunked = LayerwiseSqNorms(FlatModel(model))(x, lambda log_p: u)
    torch.testing.assert_close(chunked, whole, rtol=RTOL_EXACT, atol=0)


def test_resnet20_in_float32_matches_vmap() -> None:
    from robustkit.models import build_model, model_spec

    torch.manual_seed(0)
    model = build_model(**model_spec("resnet20", 3, 10, 16)).eval()
    x = torch.randn(6, 3, 16, 16, generator=_gen(6))
    y = torch.randint(0, 10, (6,), generator=_gen(7))
    layerwise = PerExampleGradients(model, method="layerwise")
    vmapped = PerExampleGradients(model, method="vmap")
    assert layerwise.method == "layerwise" and vmapped.method == "vmap"
    torch.testing.assert_close(layerwise.sq_norms(x, y), vmapped.sq_norms(x, y), rtol=1e-4, atol=0)


# --- what the engine must refuse -------------------------------------------------------------


class Scaled(nn.Module):
    """A parameter outside any supported layer (a learnable temperature)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, NUM_CLASSES)
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.temperature


class Tied(nn.Module):
    """One Linear module applied twice: its gradient is a sum over two uses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class Centred(nn.Module):
    """Subtracts the batch mean: examples of a batch are not independent."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.out = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return self.out(h - h.mean(0, keepdim=True))


class ReusedWeight(nn.Module):
    """Uses a Linear's weight again outside that Linear's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return self.out(h @ self.fc.weight)


def test_structures_without_closed_forms_are_named() -> None:
    assert "no closed form for Scaled" in unsupported_reason(Scaled())
    shared = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
    shared.append(shared[0])
    assert "shared" in unsupported_reason(shared)
    no_stats = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3, track_running_stats=False))
    assert "without running statistics" in unsupported_reason(no_stats)
    same = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"))
    assert "padding='same'" in unsupported_reason(same)
    circular = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"))
    assert "circular" in unsupported_reason(circular)
    assert unsupported_reason(mlp_bn()) is None


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (Scaled, "no closed form"),
        (Tied, "called more than once"),
        (Centred, "mixes the examples"),
        (ReusedWeight, "used outside its layer"),
    ],
)
def test_auto_falls_back_to_vmap_with_the_right_numbers(build, reason: str) -> None:
    model = _randomise(build(), seed=8)
    x = _data((5,))
    y = torch.randint(0, NUM_CLASSES, (7,), generator=_gen(9))
    grads = PerExampleGradients(model)
    got = grads.sq_norms(x, y)
    assert grads.method == "vmap" and reason in grads.fallback_reason
    with torch.no_grad():
        p = torch.softmax(model.eval()(x), dim=-1)
    u = (nn.functional.one_hot(y, NUM_CLASSES).double() - p).unsqueeze(1)
    if build is not Centred:  # a batch-mixing model has no per-example oracle by example
        torch.testing.assert_close(got, loop_sq_norms(model, x, u)[:, 0], rtol=RTOL_EXACT, atol=0)
    with pytest.raises(ValueError, match="per-example method 'layerwise'"):
        PerExampleGradients(model, method="layerwise").sq_norms(x, y)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown per-example method 'loop'"):
        PerExampleGradients(mlp_bn(), method="loop")


# --- Fisher traces through both methods ------------------------------------------------------


@pytest.mark.parametrize("kind", ["true", "empirical", "mc"])
def test_fisher_trace_is_the_same_by_both_methods(kind: str) -> None:
    model = _randomise(conv2d_net(), seed=10)
    x = _data((3, 9, 9), n=12)
    y = torch.randint(0, NUM_CLASSES, (12,), generator=_gen(11))
    results = {
        method: fisher_trace(
            model,
            (x, y),
            kind=kind,
            num_samples=3,
            generator=_gen(12),
            batch_size=5,
            method=method,
        )
        for method in ("layerwise", "vmap")
    }
    assert results["layerwise"].value == pytest.approx(results["vmap"].value, rel=RTOL_EXACT)
    record = results["layerwise"].to_record()
    assert record["per_example_method"] == "layerwise" and record["per_example_fallback"] is None
    assert results["vmap"].to_record()["per_example_method"] == "vmap"


def test_check_ignores_the_rounding_of_classes_with_negligible_probability() -> None:
    """float32, logits 100 apart: p ~ 1e-44 (subnormal) for the unlikely classes."""
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, NUM_CLASSES))
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([0.0, -100.0, -100.0, -95.0]))
    x = torch.randn(5, 5, generator=_gen(13))
    y = torch.zeros(5, dtype=torch.long)
    result = fisher_trace(model, (x, y), kind="true", method="layerwise")
    assert result.method == "layerwise" and math.isfinite(result.value)
    reference = fisher_trace(model.double(), (x.double(), y), kind="true", method="vmap")
    assert result.value == pytest.approx(reference.value, rel=1e-4)


@pytest.mark.gpu
def test_layerwise_on_gpu_matches_cpu() -> None:
    model = _randomise(conv2d_net(), seed=14)
    x, u = _data((3, 9, 9)), _vectors(7, 2)
    cpu = LayerwiseSqNorms(FlatModel(model))(x, lambda log_p: u)
    gpu = LayerwiseSqNorms(FlatModel(model.cuda()))(x.cuda(), lambda log_p: u.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=0)


def test_a_fallback_at_the_check_keeps_the_sampled_labels() -> None:
    """Monte Carlo: auto (layerwise, refused by its first-example check) draws the same labels
    as vmap from the start, so the two give the same estimate from the same generator state."""
    model = _randomise(ReusedWeight(), seed=15)
    x = _data((5,), n=9)
    y = torch.randint(0, NUM_CLASSES, (9,), generator=_gen(16))
    kwargs = {"kind": "mc", "num_samples": 3, "batch_size": 4}
    auto = fisher_trace(model, (x, y), generator=_gen(17), **kwargs)
    vmapped = fisher_trace(model, (x, y), generator=_gen(17), method="vmap", **kwargs)
    assert auto.method == "vmap" and "used outside its layer" in auto.fallback_reason
    assert auto.value == pytest.approx(vmapped.value, rel=RTOL_EXACT)
    assert auto.stderr == pytest.approx(vmapped.stderr, rel=1e-8)


def test_trainable_layers_that_take_no_part_give_zero() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Linear(5, 5)  # trainable, never called
            self.fixed = nn.Linear(5, NUM_CLASSES).requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fixed(x)

    model = _randomise(Unused(), seed=18)
    model.fixed.requires_grad_(False)
    x, u = _data((5,)), _vectors(7, 2)
    fast = LayerwiseSqNorms(FlatModel(model))(x, lambda log_p: u)
    assert torch.equal(fast, torch.zeros(7, 2, dtype=torch.float64))
