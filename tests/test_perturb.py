"""Tests of robustkit.evaluate.perturb: balls, the PGD core, random directions, eps-sharpness.

Oracles: closed-form gradients of softmax regression (float64), the linearised worst case
``delta = r T^2 g / ||T g||`` per group, SAM's ``perturbation`` from robustkit.optim.geometry,
the quadratic ``1/2 w^T A w`` whose sharpness is ``rho^2 lambda_max / 2``, and bit-exact
comparisons of the model before and after.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.evaluate.perturb import (
    Norm,
    attack_weights,
    build_ball,
    eps_sharpness,
    evaluate,
    perturb_sweep,
    perturbed_parameters,
    prepare_data,
    random_perturbation,
)
from robustkit.optim.geometry import (
    AdaptiveGeometry,
    FisherGeometry,
    build_geometry,
    perturbation,
    perturbation_reference,
)
from tests.tolerances import ATOL_EXACT, RTOL_EXACT

ALL_NORMS = [n.value for n in Norm]


# -- fixtures and helpers -------------------------------------------------------------------


def _softmax_regression(seed: int = 0, d: int = 5, k: int = 4, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, k).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    return model, x, y


def _softmax_grads(model: nn.Linear, x, y):
    """Closed form: dL/dW = (softmax(xW^T + b) - onehot(y))^T x / N, dL/db = mean residual."""
    with torch.no_grad():
        resid = torch.softmax(x @ model.weight.T + model.bias, dim=1)
        resid -= F.one_hot(y, model.out_features).double()
        return resid.T @ x / len(y), resid.mean(0)


def _small_net(dtype=torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 3)
    )
    net.to(dtype)
    with torch.no_grad():  # non-trivial BN statistics and parameters
        bn = net[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return net


def _data(n: int = 48, d: int = 6, k: int = 3, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)


def _clean_mean_grads(model, params, x, y):
    was = model.training
    model.eval()
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    model.train(was)
    return [g.detach() for g in grads]


def _ball_sizes(model, norm, delta, x, y, include_bn_bias, eta=None):
    """Brute-force: ``(||u_g||, ||w_g / T||)`` per group, computed independently of the code."""
    named = perturbed_parameters(model, include_bn_bias=include_bn_bias)
    params = [p for _, p in named]
    w = [p.detach() for p in params]
    d = [delta[n] for n, _ in named]
    if norm in ("layer", "filter", "global", "sam"):
        t = [torch.ones_like(v) for v in w]
    elif norm == "asam":
        e = 0.01 if eta is None else eta
        t = [
            torch.ones_like(v) if name.endswith("bias") else v.abs() + e
            for (name, _), v in zip(named, w)
        ]
    else:
        e = 1.0 if eta is None else eta
        g = _clean_mean_grads(model, params, x, y)
        t = [(1 + e * gi**2) ** -0.5 for gi in g]
    u = [di / ti for di, ti in zip(d, t)]
    base = [wi / ti for wi, ti in zip(w, t)]
    if norm == "layer":
        return [(ui.norm(), bi.norm()) for ui, bi in zip(u, base)]
    if norm == "filter":
        out = []
        for ui, bi in zip(u, base):
            for k in range(ui.shape[0]):
                out.append((ui[k].norm(), bi[k].norm()))
        return out
    norm_u = torch.sqrt(sum(ui.square().sum() for ui in u))
    norm_b = torch.sqrt(sum(bi.square().sum() for bi in base))
    return [(norm_u, norm_b)]


def _snapshot(model: nn.Module):
    """Everything an attack must leave as it was, as bytes and flags."""
    return {
        "state": {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [
            None if p.grad is None else p.grad.detach().cpu().numpy().tobytes()
            for p in model.parameters()
        ],
    }


@pytest.fixture(scope="module")
def trained_mlp():
    """A tiny MLP trained to high accuracy on three separable Gaussian blobs (float32)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 10, generator=g) * 3.0
    y = torch.arange(3).repeat_interleave(200)
    x = centres[y] + torch.randn(600, 10, generator=g)
    perm = torch.randperm(600, generator=g)
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x[:400]), y[:400]).backward()
        opt.step()
    model.eval()
    return model, (x[:400], y[:400]), (x[400:], y[400:])


# -- balls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ALL_NORMS)
@pytest.mark.parametrize("include_bn_bias", [False, True])
def test_attack_stays_in_ball_and_full_radius_attack_reaches_m(norm, include_bn_bias):
    net = _small_net()
    x, y = _data()
    m = 0.07
    # a multi-step attack from a random start stays inside the ball
    res = attack_weights(
        net, (x, y), m, norm=norm, steps=4, random_start=True, restarts=2,
        include_bn_bias=include_bn_bias, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    for size, base in _ball_sizes(net, norm, res.delta, x, y, include_bn_bias):
        assert size <= m * base * (1 + RTOL_EXACT) + ATOL_EXACT
    assert res.ball_fraction <= 1 + RTOL_EXACT
    # one full-radius step lands on the boundary of every group: achieved size == m
    res = attack_weights(net, (x, y), m, norm=norm, steps=1, include_bn_bias=include_bn_bias)
    for size, base in _ball_sizes(net, norm, res.delta, x, y, include_bn_bias):
        assert size == pytest.approx(m * float(base), rel=RTOL_EXACT, abs=ATOL_EXACT)
    assert res.ball_fraction == pytest.approx(1.0, rel=RTOL_EXACT)
    assert res.attack_loss > res.attack_loss_clean
    names = [n for n, _ in perturbed_parameters(net, include_bn_bias=include_bn_bias)]
    assert list(res.delta) == names


def test_default_perturbs_only_conv_and_linear_weights():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 1, 5, 5))
    assert [n for n, _ in perturbed_parameters(net)] == ["0.weight", "3.weight"]
    assert len(perturbed_parameters(net, include_bn_bias=True)) == 6


@pytest.mark.parametrize("norm", ALL_NORMS)
def test_random_directions_lie_on_the_boundary(norm):
    net = _small_net()
    x, y = _data()
    ball = build_ball(net, norm, data=(x, y), include_bn_bias=True)
    radii = ball.radii(0.03)
    u = ball.on_sphere(radii, torch.Generator().manual_seed(0))
    delta = dict(zip(ball.names, ball.to_delta(u)))
    for size, base in _ball_sizes(net, norm, delta, x, y, True):
        assert size == pytest.approx(0.03 * float(base), rel=RTOL_EXACT, abs=ATOL_EXACT)
    # u = delta / T round-trips
    for a, b in zip(ball.to_u(ball.to_delta(u)), u):
        torch.testing.assert_close(a, b, rtol=RTOL_EXACT, atol=ATOL_EXACT)


def test_absolute_radius():
    net = _small_net()
    x, y = _data()
    res = attack_weights(net, (x, y), 0.02, norm="global", radius="absolute", steps=1)
    assert res.delta_norm == pytest.approx(0.02, rel=RTOL_EXACT)
    res = attack_weights(net, (x, y), 0.02, norm="layer", radius="absolute", steps=1)
    for d in res.delta.values():
        assert float(d.norm()) == pytest.approx(0.02, rel=RTOL_EXACT)


# -- closed forms on softmax regression ------------------------------------------------------


def test_one_step_global_attack_is_the_linearised_worst_case():
    model, x, y = _softmax_regression()
    m = 0.01
    g_w, _ = _softmax_grads(model, x, y)
    expected = m * model.weight.detach().norm() * g_w / g_w.norm()
    for steps in (1,):
        for step_size in (None, 1.0, 3.0):  # any step >= the radius projects to the same point
            res = attack_weights(model, (x, y), m, norm="global", steps=steps, step_size=step_size)
            torch.testing.assert_close(
                res.delta["weight"], expected, rtol=RTOL_EXACT, atol=ATOL_EXACT
            )
    assert set(res.delta) == {"weight"}


def test_one_step_layer_and_filter_attacks_are_per_group_worst_cases():
    model, x, y = _softmax_regression(seed=2)
    m = 0.02
    g_w, g_b = _softmax_grads(model, x, y)
    w, b = model.weight.detach(), model.bias.detach()
    res = attack_weights(model, (x, y), m, norm="layer", steps=1, include_bn_bias=True)
    torch.testing.assert_close(
        res.delta["weight"], m * w.norm() * g_w / g_w.norm(), rtol=RTOL_EXACT, atol=ATOL_EXACT
    )
    torch.testing.assert_close(
        res.delta["bias"], m * b.norm() * g_b / g_b.norm(), rtol=RTOL_EXACT, atol=ATOL_EXACT
    )
    res = attack_weights(model, (x, y), m, norm="filter", steps=1, include_bn_bias=True)
    rows = m * w.norm(dim=1, keepdim=True) * g_w / g_w.norm(dim=1, keepdim=True)
    torch.testing.assert_close(res.delta["weight"], rows, rtol=RTOL_EXACT, atol=ATOL_EXACT)
    torch.testing.assert_close(
        res.delta["bias"], m * b.abs() * g_b.sign(), rtol=RTOL_EXACT, atol=ATOL_EXACT
    )


@pytest.mark.parametrize("norm", ["sam", "asam", "fsam"])
def test_one_step_geometry_attack_is_the_optimisers_eps(norm):
    """One step = ``r T^2 g / ||T g||``, computed here by the optimiser's own function."""
    model, x, y = _softmax_regression(seed=4)
    m = 0.01
    params = [model.weight, model.bias]
    g_w, g_b = _softmax_grads(model, x, y)
    grads = [g_w, g_b]
    is_bias = [False, True]
    geometry = build_geometry(norm)
    t = geometry.scale([p.detach() for p in params], grads, is_bias)
    t = [torch.ones_like(p) for p in params] if t is None else t
    # the relative radius: m times the norm of w in the geometry
    r = m * float(torch.sqrt(sum(((p.detach() / s) ** 2).sum() for p, s in zip(params, t))))
    res = attack_weights(model, (x, y), m, norm=norm, steps=1, include_bn_bias=True)
    for fn in (perturbation, perturbation_reference):
        eps = fn(geometry, [p.detach() for p in params], grads, is_bias, r)
        torch.testing.assert_close(res.delta["weight"], eps[0], rtol=RTOL_EXACT, atol=ATOL_EXACT)
        torch.testing.assert_close(res.delta["bias"], eps[1], rtol=RTOL_EXACT, atol=ATOL_EXACT)
    if norm == "asam":  # biases keep T = 1 (Kwon et al.'s convention)
        assert isinstance(geometry, AdaptiveGeometry) and not geometry.scale_biases
    if norm == "fsam":
        assert isinstance(geometry, FisherGeometry)


def test_degenerate_equivalences():
    model, x, y = _softmax_regression(seed=5)
    kw = dict(steps=3, random_start=True, include_bn_bias=False)

    def run(norm, **extra):
        return attack_weights(
            model,
            (x, y),
            0.05,
            norm=norm,
            generator=torch.Generator().manual_seed(7),
            **kw,
            **extra,
        )

    base = run("global")
    # sam's relative ball is the global ball; with one tensor so is the layer ball
    for other in (run("sam"), run("layer"), run("fsam", eta=0.0)):
        torch.testing.assert_close(
            other.delta["weight"], base.delta["weight"], rtol=RTOL_EXACT, atol=ATOL_EXACT
        )
    # ASAM with eta = 0: T = |w|, the relative ball contains delta = +-m w on its boundary
    ball = build_ball(model, "asam", eta=0.0)
    u = ball.to_u([0.05 * model.weight.detach()])
    assert ball.fraction(u, ball.radii(0.05)) == pytest.approx(1.0, rel=RTOL_EXACT)


# -- the attack on a trained network -------------------------------------------------------


def test_adversarial_is_worse_than_random(trained_mlp):
    model, attack, test = trained_mlp
    records = perturb_sweep(
        model, attack, test, [0.0, 0.05, 0.1, 0.2], random_trials=4,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    clean_acc = records[0]["clean_accuracy"]
    assert clean_acc > 0.95
    for rec in records[1:]:
        assert rec["adversarial_accuracy"] <= rec["random_accuracy_mean"]
        assert rec["adversarial_loss"] > rec["random_loss_mean"]
        assert rec["attack_loss"] > rec["attack_loss_clean"]
        assert rec["delta_norm_relative"] == pytest.approx(rec["magnitude"], rel=1e-4)
    assert records[-1]["adversarial_accuracy"] < clean_acc
    json.dumps(records, allow_nan=False)  # plain, strict JSON
    assert {r["bn_mode"] for r in records} == {"eval"}
    # larger balls contain smaller ones (same directions are reachable): loss grows with m
    losses = [r["attack_loss"] for r in records]
    assert losses == sorted(losses)


def test_more_steps_never_find_a_smaller_loss(trained_mlp):
    model, attack, _ = trained_mlp
    for norm in ("layer", "fsam"):
        for random_start in (False, True):

            def run(steps, step_size=0.5):
                return attack_weights(
                    model, attack, 0.1, norm=norm, steps=steps, step_size=step_size,
                    random_start=random_start, generator=torch.Generator().manual_seed(11),
                ).attack_loss  # fmt: skip

            one = run(1)
            assert run(10) >= one
            assert run(3) >= one
            # the default step sizes (2.5 / steps) differ; the stronger attack still wins here
            assert run(10, None) >= run(1, None)


def test_restarts_keep_the_best(trained_mlp):
    model, attack, _ = trained_mlp
    single = attack_weights(
        model, attack, 0.1, steps=2, random_start=True, generator=torch.Generator().manual_seed(5)
    )
    several = attack_weights(
        model, attack, 0.1, steps=2, random_start=True, restarts=3,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    assert several.attack_loss >= single.attack_loss


def test_magnitude_zero_is_the_clean_model_exactly(trained_mlp):
    model, attack, test = trained_mlp
    acc, loss = evaluate(model, test)
    records = perturb_sweep(model, attack, test, [0.0, 0.1], random_trials=2)
    rec = records[0]
    assert (rec["adversarial_accuracy"], rec["adversarial_loss"]) == (acc, loss)
    assert (rec["random_accuracy_mean"], rec["random_loss_mean"]) == (acc, loss)
    assert (rec["clean_accuracy"], rec["clean_loss"]) == (acc, loss)
    assert rec["delta_norm"] == 0.0
    res = attack_weights(model, attack, 0.0, eval_data=test)
    assert (res.accuracy, res.loss) == (acc, loss)
    assert all(not d.any() for d in res.delta.values())
    rnd = random_perturbation(model, test, 0.0, trials=3)
    assert (rnd.accuracy_mean, rnd.loss_mean, rnd.accuracy_std) == (acc, loss, 0.0)


def test_attack_eval_matches_evaluate_of_the_perturbed_copy(trained_mlp):
    """The adversarial accuracy is that of an explicitly built ``w + delta`` (two ways)."""
    import copy

    model, attack, test = trained_mlp
    res = attack_weights(model, attack, 0.1, norm="filter", eval_data=test)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name in res.delta:
                p.add_(res.delta[name])
    assert evaluate(other, test) == pytest.approx((res.accuracy, res.loss), rel=1e-6)
    assert F.cross_entropy(other(attack[0]), attack[1]).item() == pytest.approx(
        res.attack_loss, rel=1e-6
    )


def test_a_prebuilt_ball_is_reused(trained_mlp):
    model, attack, test = trained_mlp
    ball = build_ball(model, "fsam", data=attack, include_bn_bias=True, eta=0.5)
    a = attack_weights(model, attack, 0.05, ball=ball, steps=2)
    b = attack_weights(model, attack, 0.05, norm="fsam", include_bn_bias=True, eta=0.5, steps=2)
    assert a.attack_loss == b.attack_loss and a.norm == "fsam"
    assert a.hparams["include_bn_bias"] and a.hparams["eta"] == 0.5
    r = random_perturbation(model, test, 0.05, ball=ball, trials=2)
    assert r.trials == 2


def test_random_perturbation_statistics(trained_mlp):
    model, _, test = trained_mlp
    res = random_perturbation(
        model, test, 0.1, trials=4, generator=torch.Generator().manual_seed(0)
    )
    assert len(res.accuracies) == 4
    mean = sum(res.accuracies) / 4
    std = math.sqrt(sum((a - mean) ** 2 for a in res.accuracies) / 3)
    assert res.accuracy_mean == pytest.approx(mean) and res.accuracy_std == pytest.approx(std)
    again = random_perturbation(
        model, test, 0.1, trials=4, generator=torch.Generator().manual_seed(0)
    )
    assert again.losses == res.losses  # the generator is the only randomness


# -- the caller's model is restored --------------------------------------------------------


def _frozen_net_with_grads():
    net = _small_net(torch.float32)
    x, y = _data(dtype=torch.float32)
    net.train()
    net[0].bias.requires_grad_(False)
    net[4].weight.grad = torch.randn_like(net[4].weight)
    return net, x, y


@pytest.mark.parametrize(
    "call",
    [
        lambda net, d: attack_weights(
            net, d, 0.1, norm="fsam", steps=3, random_start=True, eval_data=d
        ),
        lambda net, d: attack_weights(net, d, 0.1, norm="layer", include_bn_bias=True, steps=2),
        lambda net, d: random_perturbation(net, d, 0.1, norm="asam", trials=2),
        lambda net, d: perturb_sweep(
            net, d, d, [0, 0.05, 0.1], norm="filter", steps=2, random_trials=2
        ),
        lambda net, d: eps_sharpness(net, F.cross_entropy, d, rho=0.05, ball="fsam", steps=2),
        lambda net, d: build_ball(net, "fsam", data=d),
        lambda net, d: evaluate(net, d),
    ],
    ids=["attack-fsam", "attack-layer-all", "random", "sweep", "eps-sharpness", "ball", "evaluate"],
)
def test_model_is_bit_identical_afterwards(call):
    net, x, y = _frozen_net_with_grads()
    before = _snapshot(net)
    call(net, (x, y))
    assert _snapshot(net) == before


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["attack", "random", "sweep"])
def test_model_is_restored_after_an_error_mid_attack(error, where):
    net, x, y = _frozen_net_with_grads()
    before = _snapshot(net)
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 4:  # after the weights have been perturbed
            raise error("interrupted")

    handle = net[4].register_forward_hook(hook)
    with pytest.raises(error):
        if where == "attack":
            attack_weights(net, (x, y), 0.1, steps=5, random_start=True)
        elif where == "random":
            random_perturbation(net, (x, y), 0.1, trials=6)
        else:
            perturb_sweep(net, (x, y), (x, y), [0.1, 0.2], steps=1, random_trials=3)
    handle.remove()
    assert calls["n"] == 4
    assert _snapshot(net) == before


# -- eps-sharpness ---------------------------------------------------------------------------


class _Quadratic(nn.Module):
    """``L(w) = 1/2 w^T A w``, independent of the input."""

    def __init__(self, a: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w


def _psd(eigenvalues, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_eps_sharpness_of_a_quadratic_at_its_minimum():
    eigenvalues = [4.0, 2.0, 1.0, 0.5, 0.0]
    a = _psd(eigenvalues)
    model = _Quadratic(a, torch.zeros(5, dtype=torch.float64))
    data = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))
    rho = 0.1
    exact = 0.5 * rho**2 * max(eigenvalues)
    quadratic_loss = lambda out, y: out  # noqa: E731
    # from eps = 0 the gradient vanishes: ascent cannot move
    still = eps_sharpness(model, quadratic_loss, data, rho=rho, steps=5)
    assert still["value"] == 0.0
    rec = eps_sharpness(
        model, quadratic_loss, data, rho=rho, steps=200, step_size=1.0, random_start=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert rec["value"] <= exact * (1 + RTOL_EXACT)
    assert rec["value"] == pytest.approx(exact, rel=RTOL_EXACT)
    assert rec["metric"] == "eps-sharpness"
    assert rec["estimator"] == "projected gradient ascent"
    assert (rec["rho"], rec["ball"], rec["num_examples"], rec["steps"]) == (rho, "sam", 1, 200)
    assert rec["loss_clean"] == 0.0 and rec["loss_perturbed"] == rec["value"]
    assert rec["eps_norm"] == pytest.approx(rho, rel=RTOL_EXACT)
    assert not model.w.detach().any()
    # more steps approach the maximum monotonically (the best iterate is kept)
    values = [
        eps_sharpness(
            model, quadratic_loss, data, rho=rho, steps=s, step_size=1.0, random_start=True,
            generator=torch.Generator().manual_seed(0),
        )["value"]
        for s in (1, 5, 20)
    ]  # fmt: skip
    assert values == sorted(values) and values[-1] <= exact


@pytest.mark.parametrize("ball", ALL_NORMS)
def test_eps_sharpness_is_nonnegative(trained_mlp, ball):
    model, attack, _ = trained_mlp
    rec = eps_sharpness(model, F.cross_entropy, attack, rho=0.05, ball=ball, steps=3)
    assert rec["value"] >= 0.0
    assert rec["value"] == rec["loss_perturbed"] - rec["loss_clean"]
    assert rec["radius_mode"] == "absolute" and rec["bn_mode"] == "eval"
    assert rec["num_examples"] == 400


def test_eps_sharpness_sam_is_the_absolute_global_ball(trained_mlp):
    model, attack, _ = trained_mlp
    rec = eps_sharpness(model, F.cross_entropy, attack, rho=0.05, steps=1)
    res = attack_weights(
        model, attack, 0.05, norm="global", radius="absolute", steps=1, include_bn_bias=True
    )
    assert rec["loss_perturbed"] == res.attack_loss
    assert rec["eps_norm"] == pytest.approx(0.05, rel=1e-6)


# -- data forms and validation -------------------------------------------------------------


def test_batches_and_pairs_give_the_same_answer():
    model, x, y = _softmax_regression(seed=6, n=50)
    batches = [
        (x[i : i + 16], y[i : i + 16], torch.arange(i, min(i + 16, 50))) for i in range(0, 50, 16)
    ]
    a = attack_weights(model, (x, y), 0.05, steps=3, eval_data=(x, y))
    b = attack_weights(model, batches, 0.05, steps=3, eval_data=iter(batches))
    c = attack_weights(model, (x, y), 0.05, steps=3, eval_data=(x, y), batch_size=7)
    for other in (b, c):
        assert other.attack_loss == pytest.approx(a.attack_loss, rel=RTOL_EXACT)
        assert other.accuracy == a.accuracy
        torch.testing.assert_close(
            other.delta["weight"], a.delta["weight"], rtol=1e-9, atol=ATOL_EXACT
        )


def test_prepare_data_does_not_copy_prepared_data():
    x, y = _data()
    batches = prepare_data((x, y), batch_size=100)
    again = prepare_data(batches, device="cpu", dtype=torch.float64)
    assert again[0][0] is batches[0][0] and again[0][1] is batches[0][1]
    cast = prepare_data((x, y), dtype=torch.float32)
    assert cast[0][0].dtype == torch.float32 and cast[0][1].dtype == y.dtype


def test_validation_errors():
    net = _small_net()
    data = _data()
    with pytest.raises(ValueError, match="magnitude"):
        attack_weights(net, data, -0.1)
    with pytest.raises(ValueError, match="magnitude"):
        attack_weights(net, data, float("nan"))
    with pytest.raises(ValueError, match="unknown norm"):
        attack_weights(net, data, 0.1, norm="linf")
    with pytest.raises(ValueError, match="eta"):
        attack_weights(net, data, 0.1, norm="layer", eta=0.1)
    with pytest.raises(ValueError, match="steps"):
        attack_weights(net, data, 0.1, steps=-1)
    with pytest.raises(ValueError, match="step_size"):
        attack_weights(net, data, 0.1, step_size=0.0)
    with pytest.raises(ValueError, match="restarts"):
        attack_weights(net, data, 0.1, restarts=0)
    with pytest.raises(ValueError, match="radius"):
        attack_weights(net, data, 0.1, radius="percent")
    with pytest.raises(ValueError, match="fsam"):
        build_ball(net, "fsam")
    with pytest.raises(ValueError, match="empty"):
        perturb_sweep(net, data, data, [])
    with pytest.raises(ValueError, match="no examples"):
        attack_weights(net, [], 0.1)
    with pytest.raises(ValueError, match="rho"):
        eps_sharpness(net, F.cross_entropy, data, rho=-1.0)
    with pytest.raises(ValueError, match="no parameters"):
        build_ball(nn.ReLU(), "layer")


@pytest.mark.gpu
def test_sweep_on_cuda_matches_cpu_and_restores(trained_mlp):
    import copy

    model, attack, test = trained_mlp
    gpu = copy.deepcopy(model).cuda()
    before = _snapshot(gpu)
    kw = dict(steps=3, random_trials=2)
    cpu_records = perturb_sweep(
        model, attack, test, [0.0, 0.1], generator=torch.Generator().manual_seed(0), **kw
    )
    gpu_records = perturb_sweep(
        gpu, attack, test, [0.0, 0.1], generator=torch.Generator().manual_seed(0), **kw
    )
    assert _snapshot(gpu) == before
    for c, g in zip(cpu_records, gpu_records):
        assert g["attack_loss"] == pytest.approx(c["attack_loss"], rel=1e-4)
        assert abs(g["adversarial_accuracy"] - c["adversarial_accuracy"]) <= 2 / len(test[1])
