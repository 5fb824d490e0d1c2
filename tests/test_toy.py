"""Tests of the paper's 2-D Gaussian toy (robustkit.toy, robustkit.cli.toy).

Oracles: numeric integration for the KL divergence, central finite differences for the gradient
and Hessian, a Monte-Carlo estimate of E[score score^T] for the Fisher, and the degenerate
equivalences (rho = 0 is GD, fsam-diag with eta = 0 is SAM).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import integrate, stats

from robustkit import toy
from robustkit.cli.toy import toy_command
from tests.tolerances import ATOL_EXACT, ATOL_FD, RTOL_EXACT, RTOL_FD

PROBLEM = toy.ToyProblem()
# Points spread over the landscape: both basins, the saddle region, small and large sigma.
POINTS = [(-16.8, 12.8), (19.8, 29.9), (0.3, 22.5), (-20.0, 3.0), (5.0, 60.0), (-35.0, 1.5)]


@pytest.mark.parametrize(
    ("mu", "sigma", "m", "s"),
    [(0.0, 1.0, 0.0, 1.0), (1.5, 0.7, -2.0, 3.0), (20.0, 30.0, -20.0, 10.0), (-3.0, 5.0, 4.0, 2.0)],
)
def test_kl_closed_form_matches_numeric_integration(mu, sigma, m, s):
    p, q = stats.norm(mu, sigma), stats.norm(m, s)

    def integrand(x: float) -> float:
        return p.pdf(x) * (p.logpdf(x) - q.logpdf(x))

    numeric, _ = integrate.quad(integrand, mu - 40 * sigma, mu + 40 * sigma, limit=200)
    assert toy.kl_gaussian(mu, sigma, m, s) == pytest.approx(numeric, rel=1e-8, abs=1e-10)


def test_kl_is_zero_on_the_diagonal_and_broadcasts():
    assert toy.kl_gaussian(3.0, 2.0, 3.0, 2.0) == 0.0
    out = toy.kl_gaussian(0.0, 1.0, np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    assert out.shape == (2,)


def test_loss_is_the_stated_formula():
    theta = (2.0, 7.0)
    e = [toy.kl_gaussian(*theta, m, s) for m, s in zip(PROBLEM.means, PROBLEM.stds, strict=True)]
    expected = -math.log(
        sum(
            a * math.exp(-ei / b**2)
            for a, ei, b in zip(PROBLEM.alpha, e, PROBLEM.beta, strict=True)
        )
    )
    assert toy.loss(theta) == pytest.approx(expected, rel=RTOL_EXACT, abs=ATOL_EXACT)


def _central_difference(f, x: np.ndarray) -> np.ndarray:
    cols = []
    for i in range(2):
        h = 1e-5 * max(1.0, abs(x[i]))
        e = np.zeros(2)
        e[i] = h
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("theta", POINTS)
def test_gradient_matches_finite_differences(theta):
    x = np.array(theta)
    np.testing.assert_allclose(
        toy.grad(x), _central_difference(toy.loss, x), rtol=RTOL_FD, atol=ATOL_FD
    )


@pytest.mark.parametrize("theta", POINTS)
def test_hessian_matches_finite_differences_of_the_gradient(theta):
    x = np.array(theta)
    np.testing.assert_allclose(
        PROBLEM.hessian(x), _central_difference(toy.grad, x), rtol=RTOL_FD, atol=ATOL_FD
    )


@pytest.mark.parametrize(("mu", "sigma"), [(0.0, 1.0), (-16.8, 12.8), (3.0, 0.5)])
def test_fisher_matches_monte_carlo_score_outer_product(mu, sigma):
    num_samples = 200_000
    x = np.random.default_rng(0).normal(mu, sigma, size=num_samples)
    # score of N(mu, sigma^2) in (mu, sigma)
    score = np.stack([(x - mu) / sigma**2, -1.0 / sigma + (x - mu) ** 2 / sigma**3], axis=1)
    products = score[:, :, None] * score[:, None, :]
    estimate = products.mean(axis=0)
    stderr = products.std(axis=0, ddof=1) / math.sqrt(num_samples)
    exact = toy.fisher((mu, sigma))
    np.testing.assert_array_less(np.abs(estimate - exact), 5 * stderr + 1e-15)
    assert exact[0, 1] == exact[1, 0] == 0.0


def test_perturbation_radii_and_directions():
    theta = np.array([-5.0, 10.0])
    g = toy.grad(theta)
    rho = 0.7
    eps_sam = toy.perturbation("sam", theta, g, rho)
    assert np.linalg.norm(eps_sam) == pytest.approx(rho, rel=RTOL_EXACT)
    eps_fsam = toy.perturbation("fsam", theta, g, rho)
    f = toy.fisher(theta)
    # brute-force oracle: rho F^-1 g / sqrt(g^T F^-1 g) with a dense solve
    f_inv_g = np.linalg.solve(f, g)
    np.testing.assert_allclose(
        eps_fsam, rho * f_inv_g / math.sqrt(g @ f_inv_g), rtol=RTOL_EXACT, atol=ATOL_EXACT
    )
    assert eps_fsam @ f @ eps_fsam == pytest.approx(rho**2, rel=RTOL_EXACT)
    eta = 1e4
    d = 1.0 / (1.0 + eta * g**2)
    np.testing.assert_allclose(
        toy.perturbation("fsam-diag", theta, g, rho, eta=eta),
        rho * d * g / math.sqrt(g @ (d * g)),
        rtol=RTOL_EXACT,
        atol=ATOL_EXACT,
    )
    assert not toy.perturbation("gd", theta, g, rho).any()
    assert not toy.perturbation("sam", theta, np.zeros(2), rho).any()


def test_one_fsam_step_by_hand():
    start, lr, rho = np.array([-10.0, 8.0]), 30.0, 0.5
    g = toy.grad(start)
    f_inv_g = np.linalg.solve(toy.fisher(start), g)
    probe = start + rho * f_inv_g / math.sqrt(g @ f_inv_g)
    expected = start - lr * toy.grad(probe)
    tr = toy.run("fsam", start, lr=lr, rho=rho, steps=1)
    np.testing.assert_allclose(tr.points[1], expected, rtol=RTOL_EXACT, atol=ATOL_EXACT)
    assert tr.losses[1] == toy.loss(expected)


@pytest.mark.parametrize("method", list(toy.Method))
def test_trajectories_are_deterministic(method):
    a = toy.run(method, (-12.0, 9.0), lr=30.0, rho=0.5, steps=50)
    b = toy.run(method, (-12.0, 9.0), lr=30.0, rho=0.5, steps=50)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.points.shape == (51, 2) and a.losses.shape == (51,)
    assert a.end == tuple(a.points[-1]) and a.final_loss == a.losses[-1]


@pytest.mark.parametrize("method", ["sam", "fsam", "fsam-diag"])
def test_rho_zero_is_gradient_descent_exactly(method):
    gd = toy.run("gd", (-12.0, 9.0), lr=30.0, rho=0.5, steps=100)
    other = toy.run(method, (-12.0, 9.0), lr=30.0, rho=0.0, steps=100)
    np.testing.assert_array_equal(gd.points, other.points)


def test_fsam_diag_with_eta_zero_is_sam_exactly():
    sam = toy.run("sam", (-20.0, 3.0), lr=100.0, rho=1.2, steps=100)
    diag = toy.run("fsam-diag", (-20.0, 3.0), lr=100.0, rho=1.2, steps=100, eta=0.0)
    np.testing.assert_array_equal(sam.points, diag.points)


def test_minima_match_the_reconstruction():
    # PAPER.md: flat near (20, 30) at 0.357, sharp near (-16.8, 12.8) at 0.275 (beta squared).
    flat, sharp = PROBLEM.minima()
    assert (flat.name, sharp.name) == ("flat", "sharp")
    np.testing.assert_allclose(flat.theta, (19.8101, 29.9366), atol=1e-3)
    np.testing.assert_allclose(sharp.theta, (-16.8047, 12.8025), atol=1e-3)
    assert flat.loss == pytest.approx(0.356447, abs=1e-6)
    assert sharp.loss == pytest.approx(0.275230, abs=1e-6)
    for b in (flat, sharp):
        assert np.linalg.norm(toy.grad(b.theta)) < 1e-8
    # The sharp minimum is the deeper one; the flat one has ~7x smaller Hessian eigenvalues but
    # in the Fisher metric (eigenvalues of F^-1 H) the two differ by only ~1.5x.
    assert sharp.loss < flat.loss
    assert max(flat.hessian_eigenvalues) < min(sharp.hessian_eigenvalues)
    assert 6 < sharp.hessian_eigenvalues[1] / flat.hessian_eigenvalues[1] < 8
    assert max(flat.fisher_eigenvalues) < min(sharp.fisher_eigenvalues)
    assert sharp.fisher_eigenvalues[1] / flat.fisher_eigenvalues[1] < 1.6


def test_basin_of_classifies_by_gradient_flow():
    flat, sharp = PROBLEM.minima()
    assert toy.basin_of(flat.theta) == "flat"
    assert toy.basin_of(sharp.theta) == "sharp"
    # either side of the saddle near (0.31, 22.50), along the line between the minima
    assert toy.basin_of((-1.0, 22.0)) == "sharp"
    assert toy.basin_of((1.5, 23.0)) == "flat"
    # the wide component dominates at the sharp minimum, which is why responsibilities are not
    # used to name basins
    assert PROBLEM.responsibilities(sharp.theta)[0] > 0.6


def test_default_run_ends_in_the_sharp_minimum_for_every_method():
    # What the computation gives at the defaults (start (-10, 8), lr 30, rho 0.5, 1000 steps):
    # no method leaves the sharp basin; see the module notes.
    _, sharp = PROBLEM.minima()
    for method in toy.Method:
        tr = toy.run(method)
        assert tr.basin == "sharp", method
        assert np.linalg.norm(np.subtract(tr.end, sharp.theta)) < 0.3, method
        assert tr.final_loss == pytest.approx(sharp.loss, abs=2e-3)
        assert tr.num_clamped == 0


def test_the_small_sigma_catapult_setting():
    # The one kind of setting found where FSAM ends flat and SAM sharp. Its first ascent takes
    # sigma from 3 to ~0.45 where the gradient is large, and the descent throws sigma to ~88:
    # an artefact, documented in robustkit.toy, pinned here so the documentation stays true.
    runs = {m: toy.run(m, (-20.0, 3.0), lr=100.0, rho=1.2, steps=400) for m in toy.Method}
    assert {m.value: tr.basin for m, tr in runs.items()} == {
        "gd": "sharp",
        "sam": "sharp",
        "fsam": "flat",
        "fsam-diag": "sharp",
    }
    assert runs[toy.Method.FSAM].points[1, 1] > 80
    assert runs[toy.Method.FSAM].final_loss < 0.37


def test_divergent_run_stops_at_the_last_finite_iterate():
    tr = toy.run("sam", (-10.0, 8.0), lr=1e9, rho=5.0, steps=50)
    assert tr.basin == "diverged"
    assert len(tr.points) < 51 and len(tr.points) == len(tr.losses)
    assert np.isfinite(tr.points).all() and np.isfinite(tr.losses).all()
    assert tr.num_clamped > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": (0.0, 0.0)},
        {"start": (0.0, -1.0)},
        {"start": (0.0, 1.0, 2.0)},
        {"lr": -1.0},
        {"rho": -0.1},
        {"eta": -1.0},
        {"steps": -1},
        {"steps": 1.5},
        {"lr": math.nan},
    ],
)
def test_run_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        toy.run("sam", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": (0.7,)}, {"stds": (30.0, 0.0)}, {"beta": (-1.0, 1.0)}, {"alpha": ()}],
)
def test_problem_rejects_bad_constants(kwargs):
    with pytest.raises(ValueError):
        toy.ToyProblem(**kwargs)


def test_cli_help():
    result = CliRunner().invoke(toy_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--start", "--lr", "--rho", "--eta", "--steps", "--methods", "--out"):
        assert option in result.output


def test_cli_short_run_writes_json_and_figures(tmp_path):
    out = tmp_path / "toy"
    args = ["--start=-10,8", "--start=-5,15", "--steps", "20", "--out", str(out)]
    result = CliRunner().invoke(toy_command, [*args, "--methods", "gd,fsam"])
    assert result.exit_code == 0, result.output
    assert "fsam" in result.output and "sharp" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["toy.json", "toy.pdf", "toy.png"]
    record = json.loads((out / "toy.json").read_text())
    assert record["constants"]["alpha"] == [0.7, 0.3]
    assert record["options"]["steps"] == 20
    assert [m["name"] for m in record["minima"]] == ["flat", "sharp"]
    assert len(record["trajectories"]) == 4
    tr = record["trajectories"][1]
    assert tr["method"] == "fsam" and len(tr["points"]) == 21
    # the record reproduces the run
    again = toy.run(
        "fsam", (-10.0, 8.0), lr=tr["settings"]["lr"], rho=tr["settings"]["rho"], steps=20
    )
    np.testing.assert_array_equal(again.points, np.array(tr["points"]))
    assert (out / "toy.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "toy.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize(
    "args",
    [
        ["--start", "1,0"],
        ["--start", "1,-2"],
        ["--start", "1"],
        ["--start", "a,b"],
        ["--methods", "sam,adam"],
        ["--lr", "-1"],
        ["--rho", "-0.5"],
        ["--steps", "-3"],
        ["--alpha", "0.7"],
        ["--stds", "30,0"],
    ],
)
def test_cli_bad_input_is_a_one_line_error(tmp_path, args):
    result = CliRunner().invoke(toy_command, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
