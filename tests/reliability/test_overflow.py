"""Overflow: very large counts give finite, flagged results, and the command line refuses to write them."""

import warnings

import numpy as np
import pytest
import torch

import pyro_deq
import pyro_deq.guides.deq as deq_module
from pyro_deq.cli.main import main
from pyro_deq.initialization import initial_bias, initial_weight


def counts_with_huge_column():
    """A float32 200 x 50 count matrix: column 0 around 1e5, the rest around 3."""
    generator = torch.Generator().manual_seed(0)
    y = torch.poisson(torch.full((200, 50), 3.0), generator=generator)
    y[:, 0] = torch.poisson(torch.full((200,), 1e5), generator=generator)
    return y


def test_huge_column_map_is_finite_or_flagged():
    y = counts_with_huge_column()
    family = pyro_deq.families.get("poisson")
    torch.manual_seed(0)
    model = pyro_deq.ExpFamPCA(50, 5, family=family, weight=initial_weight(family, y, 5), bias=initial_bias(family, y))
    guide = pyro_deq.AutoDEQ(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = guide.median(y)["z"]
    assert z.dtype == torch.float32
    assert bool(torch.isfinite(z).all())
    result = guide.diagnostics["result"]
    assert bool(torch.isfinite(result.residual).all())
    if not bool(result.converged.all()):
        assert [w.category for w in caught] == [pyro_deq.ConvergenceWarning]
        assert "rows did not converge after" in str(caught[0].message)


def large_loadings_model_and_counts():
    generator = torch.Generator().manual_seed(1)
    y = torch.poisson(torch.full((20, 10), 1e4), generator=generator)
    model = pyro_deq.ExpFamPCA(10, 2, family="poisson", weight=torch.full((10, 2), 50.0))
    return model, y


def test_large_loadings_converge_after_float64_refinement():
    model, y = large_loadings_model_and_counts()
    guide = pyro_deq.AutoDEQ(model)
    z = guide.median(y)["z"]

    # The float32 residual's rounding noise is about 1 here, so every row
    # needs the float64 re-solve, which meets the float32 tolerance.
    result = guide.diagnostics["result"]
    assert z.dtype == torch.float32
    assert bool(torch.isfinite(z).all())
    assert guide.diagnostics["status"] == "converged"
    assert result.stats["n_refined_float64"] == 20
    with torch.no_grad():
        problem = model.problem(y).to(torch.float64)
        reference = pyro_deq.solve(problem, torch.zeros(20, 2, dtype=torch.float64), tol=1e-8).z
    assert torch.allclose(z.double(), reference, rtol=1e-5, atol=1e-7)


def test_float32_step_ended_rows_refined(monkeypatch):
    """A float32 row counted as converged with its residual above ``tol`` is re-solved in float64.

    Newton's step-size test ends rows that way when rounding hides the rest of
    the step, which an ill-conditioned float32 Hessian can do short of the
    fixed point. Here every float32 row stops after one iteration and is
    reported converged, as such a row would be.
    """
    real_solve = deq_module.solve

    def solve_ending_early(problem, z0, **options):
        if z0.dtype == torch.float64:
            return real_solve(problem, z0, **options)
        result = real_solve(problem, z0, **{**options, "max_iter": 1})
        result.converged.fill_(True)
        return result

    monkeypatch.setattr(deq_module, "solve", solve_ending_early)
    generator = torch.Generator().manual_seed(2)
    y = torch.bernoulli(torch.full((30, 12), 0.3), generator=generator)
    model = pyro_deq.ExpFamPCA(12, 3, family="bernoulli", weight=torch.randn(12, 3, generator=generator))
    guide = pyro_deq.AutoDEQ(model)
    z = guide.median(y)["z"]

    # The prior makes the negative Hessian at least the identity, so a row
    # within the relative tolerance 3.5e-4 lies within about that of the MAP.
    result = guide.diagnostics["result"]
    assert bool(result.converged.all())
    assert bool((result.residual <= result.tol).all())
    with torch.no_grad():
        problem = model.problem(y).to(torch.float64)
        reference = real_solve(problem, torch.zeros(30, 3, dtype=torch.float64), tol=1e-10).z
    assert float((z.double() - reference).abs().max()) < 1e-3
    assert result.stats["n_refined_float64"] == 30


def test_large_loadings_flagged_not_nan_when_iterations_run_out():
    model, y = large_loadings_model_and_counts()
    guide = pyro_deq.AutoDEQ(model, max_iter=1)
    with pytest.warns(pyro_deq.ConvergenceWarning, match="20 of 20 rows did not converge after 1 iteration "):
        z = guide.median(y)["z"]
    assert bool(torch.isfinite(z).all())
    assert guide.diagnostics["status"] == "max_iter"
    assert guide.diagnostics["fraction_converged"] == 0.0


def test_cli_huge_column_converges(tmp_path):
    np.save(tmp_path / "counts.npy", counts_with_huge_column().numpy())
    arguments = ["fit", str(tmp_path / "counts.npy"), "--family", "poisson", "--latent-dim", "5",
                 "--out", str(tmp_path / "out"), "--quiet", "--steps", "3"]
    assert main(arguments) == 0
    assert (tmp_path / "out" / "latents.csv").is_file()


def test_cli_unconverged_exits_1_and_writes_nothing(tmp_path, capsys):
    np.save(tmp_path / "counts.npy", counts_with_huge_column().numpy())
    arguments = ["fit", str(tmp_path / "counts.npy"), "--family", "poisson", "--latent-dim", "5",
                 "--out", str(tmp_path / "out"), "--quiet", "--steps", "3", "--max-iter", "1"]
    assert main(arguments) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["counts.npy"]
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    for phrase in ("of 200 rows", "did not converge", "max relative residual", "nothing was written",
                   "--offset-column", "--steps", "--max-iter", "--allow-unconverged"):
        assert phrase in errors[0]

    assert main(arguments + ["--allow-unconverged"]) == 0
    diagnostics = (tmp_path / "out" / "diagnostics.json").read_text()
    assert '"unconverged_rows": [' in diagnostics


def test_float64_huge_counts_converge_at_working_precision():
    generator = torch.Generator().manual_seed(2)
    y = torch.poisson(torch.full((40, 6), 1e6, dtype=torch.float64), generator=generator)
    family = pyro_deq.families.get("poisson")
    model = pyro_deq.ExpFamPCA(6, 2, family=family, weight=0.3 * torch.randn(6, 2, dtype=torch.float64,
                               generator=generator), bias=initial_bias(family, y).double())
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyro_deq.ConvergenceWarning)
        result = pyro_deq.solve(model.problem(y), torch.zeros(40, 2, dtype=torch.float64))

    assert result.status == "converged"
    gradient = model.problem(y).gradient(result.z).detach()
    # The log joint's gradient is a sum of terms near 1e6 that cancel, so its
    # rounding noise is about 1e6 * eps * sqrt(d) per row.
    assert float(gradient.norm(dim=-1).max()) < 1e-6
