"""Oracles for the sharpness-aware optimiser family (DESIGN.md §1)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustkit.optim import (
    OPTIMIZERS,
    AdaptiveGeometry,
    EuclideanGeometry,
    FisherGeometry,
    SharpnessAware,
    build_geometry,
    build_optimizer,
    perturbation,
    perturbation_reference,
)
from tests.tolerances import ATOL_EXACT, ATOL_F32, RTOL_EXACT, RTOL_F32


def _net(dtype=torch.float64, seed=0, bn=True) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7)]
    if bn:
        layers.append(nn.BatchNorm1d(7))
    layers += [nn.Tanh(), nn.Linear(7, 3)]
    return nn.Sequential(*layers).to(dtype)


def _batch(dtype=torch.float64, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def _closure(opt, model, x, y, scale=1.0):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) * scale
        loss.backward()
        return loss

    return closure


def _expected_eps(name, model, grads, rho, eta):
    """eps = rho * D g / sqrt(g^T D g) with D = M^-1 written out per method."""
    ds = []
    for (n, p), g in zip(model.named_parameters(), grads):
        if name == "sam":
            d = torch.ones_like(p)
        elif name == "asam":
            d = torch.ones_like(p) if n.endswith("bias") else (p.abs() + eta) ** 2
        else:
            d = 1.0 / (1.0 + eta * g**2)
        ds.append(d)
    denom = torch.sqrt(sum((g * d * g).sum() for g, d in zip(grads, ds)))
    return [rho * d * g / denom for g, d in zip(grads, ds)], ds


@pytest.mark.parametrize(
    "name,rho,eta",
    [("sam", 0.05, None), ("asam", 0.5, 0.01), ("fsam", 0.1, 1.0), ("fsam", 0.3, 0.2)],
)
@pytest.mark.parametrize("foreach", [True, False])
def test_ascent_matches_closed_form_and_lies_on_the_ball(name, rho, eta, foreach):
    model = _net()
    x, y = _batch()
    opt = build_optimizer(name, model, rho=rho, eta=eta, foreach=foreach)
    _closure(opt, model, x, y)()
    w0 = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    opt.ascent_step()
    eps = [p.detach() - w for p, w in zip(model.parameters(), w0)]
    # ASAM's T uses the weights at w (before the move): evaluate the formula on a copy at w.
    at_w = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(at_w.parameters(), w0):
            p.copy_(w)
    expected, ds = _expected_eps(name, at_w, grads, rho, eta)
    for e, ex in zip(eps, expected):
        torch.testing.assert_close(e, ex, rtol=RTOL_EXACT, atol=ATOL_EXACT)
    # On the boundary of the ellipsoid: eps^T M eps = rho^2 with M = diag(1/D).
    quad = sum((e * e / d).sum() for e, d in zip(eps, ds))
    assert quad.item() == pytest.approx(rho**2, rel=RTOL_EXACT)
    opt.descent_step()
    # Weights restored bit-exactly before the base step: compare to an SGD step from w0 with
    # the second-pass gradient.
    second = [p.grad.clone() for p in model.parameters()]
    lr, wd = 0.1, 5e-4
    for p, w, g in zip(model.parameters(), w0, second):
        torch.testing.assert_close(p.detach(), w - lr * (g + wd * w), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "geometry",
    [EuclideanGeometry(), AdaptiveGeometry(0.01), AdaptiveGeometry(0.0, True), FisherGeometry(1.0)],
)
def test_foreach_path_matches_reference_loop(geometry):
    g = torch.Generator().manual_seed(3)
    params = [
        torch.randn(4, 3, generator=g),
        torch.randn(3, generator=g),
        torch.randn(2, 2, 2, generator=g),
    ]
    grads = [torch.randn_like(p) for p in params]
    is_bias = [False, True, False]
    fast = perturbation(geometry, params, grads, is_bias, 0.7)
    ref = perturbation_reference(geometry, params, grads, is_bias, 0.7)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=RTOL_F32, atol=ATOL_F32)


def test_zero_gradient_gives_zero_perturbation():
    params = [torch.randn(3)]
    grads = [torch.zeros(3)]
    for geo in (EuclideanGeometry(), FisherGeometry()):
        assert torch.equal(perturbation(geo, params, grads, [False], 0.1)[0], torch.zeros(3))
        assert torch.equal(
            perturbation_reference(geo, params, grads, [False], 0.1)[0], torch.zeros(3)
        )


def _trajectory(name, steps=5, **kw):
    model = _net(seed=4)
    x, y = _batch(seed=5)
    opt = build_optimizer(name, model, **kw)
    for _ in range(steps):
        opt.step(_closure(opt, model, x, y))
    return [p.detach().clone() for p in model.parameters()], model


@pytest.mark.parametrize("name", ["sam", "asam", "fsam"])
def test_rho_zero_is_exactly_the_base_optimiser(name):
    base, base_model = _trajectory("sgd")
    sa, sa_model = _trajectory(name, rho=0.0)
    for a, b in zip(base, sa):
        assert torch.equal(a, b)
    for a, b in zip(base_model.buffers(), sa_model.buffers()):
        assert torch.equal(a, b)


def test_fsam_with_eta_zero_is_exactly_sam():
    sam, _ = _trajectory("sam", rho=0.1)
    fsam, _ = _trajectory("fsam", rho=0.1, eta=0.0)
    for a, b in zip(sam, fsam):
        assert torch.equal(a, b)


def test_asam_with_unit_scale_is_sam():
    # Every parameter a bias (Kwon's convention: T = 1 on biases) -> SAM's ball exactly.
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.randn(5, dtype=torch.float64))

        def forward(self, x):
            return ((x + self.bias) ** 2).sum(1)

    x = torch.randn(8, 5, dtype=torch.float64)
    runs = {}
    for name in ("sam", "asam"):
        torch.manual_seed(0)
        model = Shift()
        opt = build_optimizer(name, model, rho=0.2)
        for _ in range(4):

            def closure():
                opt.zero_grad()
                loss = model(x).mean()
                loss.backward()
                return loss

            opt.step(closure)
        runs[name] = model.bias.detach().clone()
    assert torch.equal(runs["sam"], runs["asam"])
    # and T = |w| + eta = 1 exactly (w = 0, eta = 1) gives SAM's first ascent.
    params, grads = [torch.zeros(4, dtype=torch.float64)], [torch.randn(4, dtype=torch.float64)]
    a = perturbation(AdaptiveGeometry(eta=1.0), params, grads, [False], 0.3)
    b = perturbation(EuclideanGeometry(), params, grads, [False], 0.3)
    assert torch.equal(a[0], b[0])


def test_quadratic_full_step_matches_hand_computation():
    # L(w) = 1/2 w^T A w + b^T w, grad = A w + b. SAM step with momentum 0, wd 0:
    # eps = rho g/||g||; w' = w - lr * (A (w + eps) + b).
    torch.manual_seed(0)
    q = torch.randn(4, 4, dtype=torch.float64)
    A = q @ q.T + torch.eye(4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    w0 = torch.randn(4, dtype=torch.float64)
    lr, rho, eta = 0.05, 0.3, 0.7

    class Quad(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(w0.clone())

        def forward(self):
            return 0.5 * self.weight @ A @ self.weight + b @ self.weight

    for name in ("sam", "fsam", "asam"):
        model = Quad()
        kw = {} if name == "sam" else {"eta": eta}
        opt = build_optimizer(name, model, lr=lr, momentum=0.0, weight_decay=0.0, rho=rho, **kw)

        def closure():
            opt.zero_grad()
            loss = model()
            loss.backward()
            return loss

        opt.step(closure)
        g = A @ w0 + b
        d = {
            "sam": torch.ones(4, dtype=torch.float64),
            "fsam": 1 / (1 + eta * g**2),
            "asam": (w0.abs() + eta) ** 2,
        }[name]
        eps = rho * d * g / torch.sqrt(g @ (d * g))
        expected = w0 - lr * (A @ (w0 + eps) + b)
        torch.testing.assert_close(
            model.weight.detach(), expected, rtol=RTOL_EXACT, atol=ATOL_EXACT
        )


def _eps_after_ascent(name, scale=1.0, scaler=None, **kw):
    model = _net(bn=False)
    x, y = _batch()
    opt = build_optimizer(name, model, **kw)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y) * scale
    (scaler.scale(loss) if scaler is not None else loss).backward()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.ascent_step(scaler=scaler)
    return [p.detach() - w for p, w in zip(model.parameters(), w0)]


def test_scale_dependence_sam_invariant_fsam_not():
    for a, b in zip(_eps_after_ascent("sam"), _eps_after_ascent("sam", scale=1000.0)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(
            _eps_after_ascent("fsam", eta=1.0), _eps_after_ascent("fsam", scale=1000.0, eta=1.0)
        )
    ]
    assert max(diffs) > 1e-3


@pytest.mark.parametrize("name", ["sam", "fsam", "asam"])
def test_grad_scaler_unscaled_path_gives_the_same_eps(name):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    plain = _eps_after_ascent(name)
    scaled = _eps_after_ascent(name, scaler=scaler)
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)


def test_grad_scaler_full_step_matches_unscaled_step():
    results = []
    for use_scaler in (False, True):
        model = _net(bn=False)
        x, y = _batch()
        opt = build_optimizer("fsam", model)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if use_scaler else None
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            (scaler.scale(loss) if scaler else loss).backward()
            opt.ascent_step(scaler=scaler)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            (scaler.scale(loss) if scaler else loss).backward()
            opt.descent_step(scaler=scaler)
            if scaler:
                scaler.update()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gradient_accumulation_gives_fsam_the_mean_gradient():
    """k micro-batches, each loss divided by k, give the full-batch mean gradient and eps."""
    x, y = _batch(n=24)
    model = _net(bn=False)
    opt = build_optimizer("fsam", model)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.ascent_step()
    full = [p.detach() - w for p, w in zip(model.parameters(), w0)]
    opt.descent_step()

    model = _net(bn=False)
    opt = build_optimizer("fsam", model)
    opt.zero_grad()
    k = 3
    for xc, yc in zip(x.chunk(k), y.chunk(k)):
        (F.cross_entropy(model(xc), yc) / k).backward()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.ascent_step()
    accumulated = [p.detach() - w for p, w in zip(model.parameters(), w0)]
    for a, b in zip(full, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", ["sam", "asam", "fsam"])
def test_bn_running_stats_are_those_of_the_clean_pass(name):
    model = _net()
    x, y = _batch()
    opt = build_optimizer(name, model)
    clean = copy.deepcopy(model)
    clean(x)  # the clean pass alone, in train mode
    opt.step(_closure(opt, model, x, y))
    bn, bn_clean = model[1], clean[1]
    assert torch.equal(bn.running_mean, bn_clean.running_mean)
    assert torch.equal(bn.running_var, bn_clean.running_var)
    assert torch.equal(bn.num_batches_tracked, bn_clean.num_batches_tracked)

    # "both" lets the second pass update them too.
    model = _net()
    opt = build_optimizer(name, model, bn_policy="both")
    opt.step(_closure(opt, model, x, y))
    assert model[1].num_batches_tracked.item() == 2
    assert not torch.equal(model[1].running_mean, bn_clean.running_mean)


def test_state_dict_round_trip_keeps_lockstep():
    x, y = _batch()
    model_a = _net()
    opt_a = build_optimizer("fsam", model_a)
    for _ in range(3):
        opt_a.step(_closure(opt_a, model_a, x, y))
    model_b = copy.deepcopy(model_a)
    opt_b = build_optimizer("fsam", model_b, lr=0.5)  # different lr: must come from the state
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups[0]["lr"] == 0.1
    for _ in range(3):
        opt_a.step(_closure(opt_a, model_a, x, y))
        opt_b.step(_closure(opt_b, model_b, x, y))
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)


def test_scheduler_drives_the_base_learning_rate():
    model = _net()
    opt = build_optimizer("sam", model, lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    x, y = _batch()
    opt.step(_closure(opt, model, x, y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(
        0.2 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()) / 2
    )
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_closure_error_restores_weights():
    model = _net()
    x, y = _batch()
    opt = build_optimizer("sam", model)
    w0 = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return _closure(opt, model, x, y)()

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    for p, w in zip(model.parameters(), w0):
        assert torch.equal(p.detach(), w)


def test_adamw_base():
    model = _net()
    opt = build_optimizer("fsam", model, base="adamw", lr=1e-3, weight_decay=0.01)
    assert isinstance(opt.base_optimizer, torch.optim.AdamW)
    x, y = _batch()
    l0 = opt.step(_closure(opt, model, x, y)).item()
    for _ in range(20):
        loss = opt.step(_closure(opt, model, x, y)).item()
    assert loss < l0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_contract_every_registered_optimizer_descends_on_a_convex_problem(name):
    """Least squares: every optimiser reaches near the closed-form minimum, no NaN."""
    torch.manual_seed(0)
    X = torch.randn(64, 4, dtype=torch.float64)
    w_true = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    t = X @ w_true
    model = nn.Linear(4, 1, bias=False).to(torch.float64)
    opt = build_optimizer(
        name,
        model,
        lr=0.1,
        momentum=0.5,
        weight_decay=0.0,
        **({} if name == "sgd" else {"rho": 0.01}),
    )
    losses = []
    for _ in range(200):

        def closure():
            opt.zero_grad()
            loss = 0.5 * ((model(X).squeeze(1) - t) ** 2).mean()
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 1e-3 * losses[0]
    # SAM-type minima of a quadratic coincide with the true minimum.
    torch.testing.assert_close(model.weight.detach().squeeze(0), w_true, rtol=0, atol=0.05)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="adam"), "unknown optimizer"),
        (dict(name="sam", rho=-0.1), "rho must be >= 0"),
        (dict(name="fsam", eta=-1.0), "eta must be >= 0"),
        (dict(name="sam", lr=-0.1), "lr must be > 0"),
        (dict(name="sam", lr=0.0), "lr must be > 0"),
        (dict(name="sam", weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(name="sam", rho=float("nan")), "rho must be a finite number"),
        (dict(name="sgd", rho=0.1), "rho is not a parameter of sgd"),
        (dict(name="sam", eta=0.1), "eta is not a parameter of sam"),
        (dict(name="sam", base="lbfgs"), "unknown base optimizer"),
        (dict(name="asam", asam_convention="x"), "unknown asam_convention"),
        (dict(name="sam", bn_policy="never"), "bn_policy must be one of"),
    ],
)
def test_error_table(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        build_optimizer(name, _net(), **kwargs)


def test_build_geometry_names():
    assert isinstance(build_geometry("sam"), EuclideanGeometry)
    assert build_geometry("asam").eta == 0.01
    assert build_geometry("fsam", eta=0.2).eta == 0.2
    with pytest.raises(ValueError, match="unknown geometry"):
        build_geometry("ellipse")


def test_sgd_is_one_pass():
    model = _net()
    x, y = _batch()
    opt = build_optimizer("sgd", model)
    calls = []

    def closure():
        calls.append(1)
        return _closure(opt, model, x, y)()

    opt.step(closure)
    assert len(calls) == 1
    assert isinstance(opt, SharpnessAware) and opt.geometry is None


def test_bf16_autocast_without_scaler_steps_in_float32_weights():
    model = _net(dtype=torch.float32, bn=False)
    x, y = _batch(dtype=torch.float32)
    opt = build_optimizer("fsam", model)
    w0 = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.isfinite(loss)
    for p, w in zip(model.parameters(), w0):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        assert not torch.equal(p.detach(), w)
