"""Sharpness metrics against exact answers.

Oracles: dense float64 Hessians (``torch.func.hessian``) and their eigendecomposition, explicit
symmetric matrices for the matrix-free solvers, per-example per-class loops for the Fisher,
and the closed form of logistic regression's Fisher. Stochastic estimators are tested
statistically with fixed seeds: the estimate lies within ``STDERR_Z`` reported standard
errors of the exact value.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustkit.evaluate.curvature import dense_hessian, per_example_log_prob_sq_norms_loop
from robustkit.evaluate.sharpness import (
    fisher_trace,
    hessian_top_eigenvalues,
    hessian_trace,
    hutch_plus_plus,
    hutchinson,
    lanczos,
    power_iteration,
)
from tests.test_curvature import (
    MODELS,
    NUM_CLASSES,
    assert_unchanged,
    snapshot,
    tiny_bn_net,
    tiny_data,
    tiny_mlp,
)
from tests.tolerances import RTOL_EXACT, RTOL_LANCZOS, RTOL_POWER, STDERR_Z


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def symmetric_matrix(dim: int = 60, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with a known, well-separated, indefinite spectrum."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen(seed), dtype=torch.float64))
    values = torch.linspace(-3.0, 5.0, dim, dtype=torch.float64) ** 3 / 10
    return (q * values) @ q.T


def wanted(values: torch.Tensor, k: int, which: str) -> torch.Tensor:
    if which == "largest":
        return values.sort(descending=True).values[:k]
    if which == "smallest":
        return values.sort().values[:k]
    return values[values.abs().argsort(descending=True)][:k]


def exact_spectrum(model: nn.Module, data) -> torch.Tensor:
    return torch.linalg.eigvalsh(dense_hessian(model, F.cross_entropy, data))


# --- matrix-free solvers on explicit matrices ------------------------------------------------


@pytest.mark.parametrize("which", ["largest", "magnitude", "smallest"])
def test_lanczos_on_an_explicit_matrix(which: str) -> None:
    a = symmetric_matrix()
    values, vectors, estimates, _, converged = lanczos(
        lambda v: a @ v, 60, 4, which=which, tol=1e-12, max_iters=60, generator=gen()
    )
    assert converged
    expected = wanted(torch.linalg.eigvalsh(a), 4, which)
    torch.testing.assert_close(values, expected, rtol=RTOL_LANCZOS, atol=1e-12)
    residuals = torch.linalg.vector_norm(a @ vectors - vectors * values, dim=0)
    assert (residuals <= 1e-9).all()
    torch.testing.assert_close(estimates, residuals, rtol=0, atol=1e-9)


def test_lanczos_finds_all_eigenvalues_of_a_small_matrix() -> None:
    """Krylov dimension = dim: Lanczos is exact (an invariant subspace)."""
    a = symmetric_matrix(8, seed=1)
    values, *_ = lanczos(lambda v: a @ v, 8, 8, which="smallest", max_iters=50, generator=gen())
    torch.testing.assert_close(values, torch.linalg.eigvalsh(a), rtol=RTOL_LANCZOS, atol=1e-12)


@pytest.mark.parametrize("which", ["largest", "magnitude", "smallest"])
def test_power_iteration_on_an_explicit_matrix(which: str) -> None:
    """Power iteration with spectral shifts for ``largest``/``smallest``."""
    a = symmetric_matrix(30, seed=2)
    values, *_ = power_iteration(
        lambda v: a @ v, 30, 2, which=which, tol=1e-14, max_iters=5000, generator=gen()
    )
    expected = wanted(torch.linalg.eigvalsh(a), 2, which)
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-8)


def test_solver_callbacks_report_every_step() -> None:
    a = symmetric_matrix(30, seed=5)
    seen: list[tuple[int, float]] = []
    _, _, _, iterations, _ = lanczos(
        lambda v: a @ v,
        30,
        2,
        tol=1e-10,
        generator=gen(),
        callback=lambda m, v, r: seen.append((m, float(v[0]))),
    )
    assert [m for m, _ in seen] == list(range(2, iterations + 1))
    assert seen[-1][1] == pytest.approx(float(torch.linalg.eigvalsh(a).max()), rel=RTOL_LANCZOS)
    counts: list[int] = []
    power_iteration(
        lambda v: a @ v, 30, 1, which="smallest", max_iters=7, generator=gen(),
        callback=lambda n, value, residual: counts.append(n),
    )  # fmt: skip
    assert counts == list(range(1, len(counts) + 1)) and len(counts) <= 14


def test_hutch_plus_plus_is_exact_for_low_rank() -> None:
    """Sketch size >= rank: the deflated residual vanishes and the trace is exact."""
    u = torch.randn(50, 3, generator=gen(3), dtype=torch.float64)
    a = u @ torch.diag(torch.tensor([5.0, -2.0, 1.0], dtype=torch.float64)) @ u.T
    est = hutch_plus_plus(lambda v: a @ v, 50, sketch_size=5, max_probes=40, generator=gen())
    assert est.value == pytest.approx(float(a.trace()), rel=1e-10)
    assert est.stderr == pytest.approx(0.0, abs=1e-9)
    assert est.converged and est.num_products == 2 * 5 + est.num_probes


def test_hutchinson_on_an_explicit_matrix_and_its_variance() -> None:
    """Rademacher probes: Var z'Az = 2(||A||_F^2 - sum A_ii^2); the stderr reflects it."""
    a = symmetric_matrix(40, seed=4)
    est = hutchinson(lambda v: a @ v, 40, rtol=1e-12, max_probes=400, generator=gen())
    assert not est.converged and est.num_probes == 400
    assert abs(est.value - float(a.trace())) < STDERR_Z * est.stderr
    expected_sd = (2 * (a.pow(2).sum() - a.diagonal().pow(2).sum())).sqrt() / 20
    assert est.stderr == pytest.approx(float(expected_sd), rel=0.2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda a: lanczos(a, 5, 6), "exceeds"),
        (lambda a: lanczos(a, 5, 2, max_iters=1), "at least k"),
        (lambda a: lanczos(a, 5, 1, which="biggest"), "biggest"),
        (lambda a: power_iteration(a, 5, 0), "positive int"),
        (lambda a: hutchinson(a, 5, rtol=0), "rtol must be positive"),
        (lambda a: hutchinson(a, 5, min_probes=1), "at least 2"),
        (lambda a: hutch_plus_plus(a, 5, sketch_size=5, max_probes=15), "too small"),
    ],
)
def test_solvers_validate_arguments(call, match) -> None:
    a = torch.eye(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        call(lambda v: a @ v)


# --- Hessian eigenvalues of tiny networks ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("which", ["largest", "magnitude", "smallest"])
def test_lanczos_matches_dense_hessian(name: str, which: str) -> None:
    model = MODELS[name]()
    data = tiny_data()
    exact = wanted(exact_spectrum(model, data), 3, which)
    before = snapshot(model)
    result = hessian_top_eigenvalues(
        model, F.cross_entropy, data, k=3, which=which, max_iters=300, generator=gen(),
        batch_size=16, return_eigenvectors=True,
    )  # fmt: skip
    assert_unchanged(model, before)
    assert result.converged
    torch.testing.assert_close(
        torch.tensor(result.eigenvalues, dtype=torch.float64), exact, rtol=RTOL_LANCZOS, atol=1e-9
    )
    # A Rayleigh quotient lies within its residual of an eigenvalue.
    assert all(
        abs(v - e) <= r + 1e-12
        for v, e, r in zip(result.eigenvalues, exact.tolist(), result.residuals, strict=True)
    )
    assert max(result.residuals) <= 1e-8 * max(abs(v) for v in result.eigenvalues) * 10
    assert result.num_hvps == result.num_iterations + 3
    assert result.eigenvectors.shape == (result.num_parameters, 3)
    assert result.num_examples == 60


def test_lanczos_default_is_algebraically_largest_not_magnitude() -> None:
    """At random weights the spectrum has a large negative end; 'largest' must not pick it."""
    model, data = tiny_mlp(), tiny_data()
    spectrum = exact_spectrum(model, data)
    largest = hessian_top_eigenvalues(model, F.cross_entropy, data, generator=gen()).value
    assert largest == pytest.approx(float(spectrum.max()), rel=RTOL_LANCZOS)
    assert float(spectrum.min()) < 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_power_iteration_matches_dense_hessian_to_its_tolerance(name: str) -> None:
    model = MODELS[name]()
    data = tiny_data()
    exact = wanted(exact_spectrum(model, data), 2, "magnitude")
    before = snapshot(model)
    result = hessian_top_eigenvalues(
        model, F.cross_entropy, data, k=2, which="magnitude", method="power", tol=1e-12,
        max_iters=3000, generator=gen(),
    )  # fmt: skip
    assert_unchanged(model, before)
    torch.testing.assert_close(
        torch.tensor(result.eigenvalues, dtype=torch.float64), exact, rtol=RTOL_POWER, atol=1e-9
    )
    assert result.num_hvps == result.num_iterations + 2


def test_power_iteration_with_pyhessian_defaults() -> None:
    """tol=1e-3 bounds the change between iterates; the residual bounds the actual error."""
    model, data = tiny_bn_net(), tiny_data()
    exact = float(exact_spectrum(model, data).abs().max())
    result = hessian_top_eigenvalues(
        model, F.cross_entropy, data, which="magnitude", method="power", generator=gen()
    )
    assert result.tol == 1e-3 and result.max_iters == 100
    assert result.num_iterations <= 100
    assert abs(abs(result.value) - exact) <= result.residuals[0] + 1e-12


def test_eigenvalues_are_reproducible_and_batch_independent() -> None:
    model, (x, y) = tiny_bn_net(), tiny_data()
    one = hessian_top_eigenvalues(model, F.cross_entropy, (x, y), k=2, generator=gen(5))
    many = hessian_top_eigenvalues(
        model,
        F.cross_entropy,
        list(zip(x.split(7), y.split(7), strict=True)),
        k=2,
        generator=gen(5),
    )
    assert one.num_hvps == many.num_hvps
    torch.testing.assert_close(
        torch.tensor(one.eigenvalues), torch.tensor(many.eigenvalues), rtol=1e-9, atol=0
    )


def test_float32_lanczos_reaches_its_tolerance() -> None:
    model = tiny_bn_net(dtype=torch.float32)
    x, y = tiny_data()
    exact = float(exact_spectrum(tiny_bn_net(), (x, y)).max())
    result = hessian_top_eigenvalues(model, F.cross_entropy, (x.float(), y), generator=gen())
    assert result.tol == 1e-4 and result.converged
    assert result.value == pytest.approx(exact, rel=1e-4)


# --- Hessian trace ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_estimators_cover_the_exact_trace(name: str, method: str) -> None:
    model = MODELS[name]()
    data = tiny_data()
    exact = float(dense_hessian(model, F.cross_entropy, data).trace())
    before = snapshot(model)
    result = hessian_trace(
        model, F.cross_entropy, data, method=method, rtol=1e-3, max_probes=150, generator=gen(),
        batch_size=30,
    )  # fmt: skip
    assert_unchanged(model, before)
    assert abs(result.value - exact) < STDERR_Z * result.stderr
    assert result.num_hvps <= 150
    if method == "hutchinson":
        assert result.num_hvps == result.num_probes and result.sketch_size == 0
    else:
        assert result.num_hvps == 2 * result.sketch_size + result.num_probes


def test_hutch_plus_plus_beats_hutchinson_at_equal_cost() -> None:
    """The sketch removes the top of the spectrum, shrinking the standard error."""
    model, data = tiny_mlp(), tiny_data()
    kwargs = {"rtol": 1e-9, "max_probes": 120}
    plain = hessian_trace(model, F.cross_entropy, data, generator=gen(), **kwargs)
    plus = hessian_trace(model, F.cross_entropy, data, method="hutch++", generator=gen(), **kwargs)
    assert plain.num_hvps == plus.num_hvps == 120
    assert plus.stderr < plain.stderr


def test_trace_stops_at_rtol() -> None:
    """At random weights the trace is small next to ||H||_F (sd of one probe ~ 6 x trace)."""
    model, data = tiny_mlp(), tiny_data()
    exact = float(dense_hessian(model, F.cross_entropy, data).trace())
    result = hessian_trace(model, F.cross_entropy, data, rtol=0.5, max_probes=1000, generator=gen())
    assert result.converged and result.num_probes < 1000
    assert result.stderr <= 0.5 * abs(result.value)
    assert abs(result.value - exact) < STDERR_Z * result.stderr


def test_trace_is_reproducible_and_batch_independent() -> None:
    model, (x, y) = tiny_bn_net(), tiny_data()
    a = hessian_trace(model, F.cross_entropy, (x, y), max_probes=30, generator=gen(9))
    b = hessian_trace(
        model, F.cross_entropy, (x, y), batch_size=11, max_probes=30, generator=gen(9)
    )
    assert a.value == pytest.approx(b.value, rel=1e-10)
    assert a.stderr == pytest.approx(b.stderr, rel=1e-8)


# --- Fisher trace ----------------------------------------------------------------------------


def fisher_by_loops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(true, empirical) Fisher traces by a loop over examples and classes."""
    with torch.no_grad():
        p = torch.softmax(model.eval()(x), dim=-1)
    true = 0.0
    for c in range(p.shape[1]):
        classes = torch.full_like(y, c)
        true += float((p[:, c] * per_example_log_prob_sq_norms_loop(model, x, classes)).sum())
    empirical = float(per_example_log_prob_sq_norms_loop(model, x, y).sum())
    return true / len(x), empirical / len(x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_and_empirical_fisher_match_loops(name: str) -> None:
    model = MODELS[name]()
    x, y = tiny_data(24)
    before = snapshot(model)
    true = fisher_trace(model, (x, y), batch_size=10)
    empirical = fisher_trace(model, (x, y), kind="empirical", batch_size=10)
    assert_unchanged(model, before)
    ref_true, ref_empirical = fisher_by_loops(MODELS[name](), x, y)
    assert true.value == pytest.approx(ref_true, rel=1e-10)
    assert empirical.value == pytest.approx(ref_empirical, rel=1e-10)
    assert true.stderr is None and true.num_gradients == 24 * NUM_CLASSES
    assert true.to_record()["metric"] == "fisher-trace"
    assert empirical.to_record()["metric"] == "fisher-trace-empirical"


def test_empirical_fisher_is_mean_squared_cross_entropy_gradient() -> None:
    model, (x, y) = tiny_mlp(), tiny_data(10)
    total = 0.0
    for n in range(10):
        loss = F.cross_entropy(model(x[n : n + 1]), y[n : n + 1])
        total += float(
            sum(g.pow(2).sum() for g in torch.autograd.grad(loss, list(model.parameters())))
        )
    assert fisher_trace(model, (x, y), kind="empirical").value == pytest.approx(
        total / 10, rel=1e-10
    )


@pytest.mark.parametrize("num_samples", [1, 8])
def test_monte_carlo_fisher_converges_to_exact(num_samples: int) -> None:
    model, data = tiny_bn_net(), tiny_data()
    exact = fisher_trace(model, data).value
    mc = fisher_trace(
        model, data, kind="mc", num_samples=num_samples, generator=gen(), batch_size=16
    )
    assert abs(mc.value - exact) < STDERR_Z * mc.stderr
    assert mc.num_gradients == 60 * num_samples and mc.num_samples == num_samples
    assert mc.stderr_kind is not None
    again = fisher_trace(
        model, data, kind="mc", num_samples=num_samples, generator=gen(), batch_size=16
    )
    assert again.value == mc.value


def test_monte_carlo_error_shrinks_with_samples() -> None:
    model, data = tiny_mlp(), tiny_data()
    exact = fisher_trace(model, data).value
    errors = [
        abs(fisher_trace(model, data, kind="mc", num_samples=k, generator=gen(1)).value - exact)
        for k in (2, 64)
    ]
    assert errors[1] < errors[0]


class SigmoidAsSoftmax(nn.Module):
    """Binary logistic regression p(y=1|x) = σ(wᵀx + b) written as 2-class logits [0, wᵀx + b]."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def test_logistic_regression_fisher_closed_form() -> None:
    """σ model: F = X̃ᵀ diag(σ(1-σ)) X̃ / N with X̃ = [X, 1], so tr F = Σ σ(1-σ)(||x||² + 1) / N."""
    x, _ = tiny_data(40)
    y = torch.randint(0, 2, (40,), generator=gen(1))
    model = SigmoidAsSoftmax(x.shape[1]).double()
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(1, x.shape[1], generator=gen(2), dtype=torch.float64))
        s = torch.sigmoid(model.linear(x)).squeeze(1)
    x_aug = torch.cat([x, torch.ones(40, 1, dtype=x.dtype)], dim=1)
    fisher = x_aug.T @ torch.diag(s * (1 - s)) @ x_aug / 40
    result = fisher_trace(model, (x, y), batch_size=16)
    assert result.value == pytest.approx(float(fisher.trace()), rel=RTOL_EXACT)
    # The Fisher of the logistic loss is also its Hessian (canonical link): the same trace.
    assert float(dense_hessian(model, F.cross_entropy, (x, y)).trace()) == pytest.approx(
        float(fisher.trace()), rel=RTOL_EXACT
    )


def test_two_class_softmax_regression_fisher_closed_form() -> None:
    """nn.Linear(d, 2) with softmax: F = Σ_n (diag(p) - ppᵀ) ⊗ x̃x̃ᵀ / N.

    So tr F = 2 Σ_n p_n(1 - p_n) ||x̃_n||² / N with x̃ = [x, 1]: twice the sigmoid model's.
    """
    x, _ = tiny_data(40)
    y = torch.randint(0, 2, (40,), generator=gen(1))
    model = nn.Linear(x.shape[1], 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, x.shape[1], generator=gen(3), dtype=torch.float64))
        p = torch.softmax(model(x), dim=1)[:, 1]
    sq = x.pow(2).sum(1) + 1
    expected = float((2 * p * (1 - p) * sq).sum() / 40)
    assert fisher_trace(model, (x, y)).value == pytest.approx(expected, rel=RTOL_EXACT)


# --- records and state -----------------------------------------------------------------------


def test_all_metrics_leave_a_mixed_state_model_unchanged() -> None:
    model = tiny_bn_net()
    model[0].weight.requires_grad_(False)  # a frozen layer
    model[3].eval()  # a module in another mode than its parent
    before = snapshot(model)
    data = tiny_data(20)
    hessian_top_eigenvalues(model, F.cross_entropy, data, k=2, generator=gen())
    hessian_top_eigenvalues(model, F.cross_entropy, data, method="power", generator=gen())
    hessian_trace(model, F.cross_entropy, data, max_probes=20, generator=gen())
    hessian_trace(model, F.cross_entropy, data, method="hutch++", max_probes=30, generator=gen())
    for kind in ("true", "mc", "empirical"):
        fisher_trace(model, data, kind=kind, generator=gen())
    assert_unchanged(model, before)


def test_model_is_restored_when_a_metric_fails() -> None:
    model = tiny_bn_net()
    before = snapshot(model)

    def broken_loss(out, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hessian_top_eigenvalues(model, broken_loss, tiny_data(8), generator=gen())
    assert_unchanged(model, before)


def test_records_are_json_and_name_their_estimators() -> None:
    model, data = tiny_mlp(), tiny_data(20)
    records = [
        hessian_top_eigenvalues(model, F.cross_entropy, data, k=2, generator=gen()).to_record(),
        hessian_trace(model, F.cross_entropy, data, max_probes=20, generator=gen()).to_record(),
        fisher_trace(model, data, kind="mc", num_samples=2, generator=gen()).to_record(),
    ]
    for record in records:
        assert json.loads(json.dumps(record)) == record
        assert {"metric", "value", "stderr", "estimator", "num_examples"} <= record.keys()
    assert records[0]["estimator"].startswith("lanczos") and records[0]["which"] == "largest"
    assert len(records[0]["eigenvalues"]) == len(records[0]["residuals"]) == 2
    assert records[1]["estimator"].startswith("hutchinson")
    assert records[2]["fisher"] == "mc" and "monte carlo" in records[2]["estimator"]


@pytest.mark.gpu
def test_metrics_on_gpu_match_cpu() -> None:
    data = tiny_data()
    cpu = hessian_top_eigenvalues(tiny_bn_net(), F.cross_entropy, data, k=2, generator=gen())
    gpu = hessian_top_eigenvalues(tiny_bn_net().cuda(), F.cross_entropy, data, k=2, generator=gen())
    torch.testing.assert_close(
        torch.tensor(gpu.eigenvalues), torch.tensor(cpu.eigenvalues), rtol=RTOL_LANCZOS, atol=1e-9
    )
    f_cpu = fisher_trace(tiny_bn_net(), data).value
    f_gpu = fisher_trace(tiny_bn_net().cuda(), data).value
    assert f_gpu == pytest.approx(f_cpu, rel=1e-9)
    t = hessian_trace(tiny_bn_net().cuda(), F.cross_entropy, data, max_probes=40, generator=gen())
    exact = float(dense_hessian(tiny_bn_net(), F.cross_entropy, data).trace())
    assert abs(t.value - exact) < STDERR_Z * t.stderr
