import os

import numpy as np
import pyro

import pytest
import torch

import pyro_deq
from pyro_deq.comparison import Settings, compare
from pyro_deq.datasets import make_synthetic

TINY = Settings(subset=8, train_steps=30, svi_steps=300, nuts_samples=150, nuts_warmup=150,
                num_draws=400, max_rows=200)


@pytest.fixture(scope="module")
def gaussian_report():
    data = make_synthetic(n_samples=150, n_features=6, n_components=2, family="gaussian", seed=3)
    pyro.set_rng_seed(0)
    model = pyro_deq.ExpFamPCA(6, 2, family="gaussian")
    return compare(model, data.data, labels=data.target, settings=TINY, seed=1, dataset_name="synthetic")


def test_compare_gaussian_deq_is_exact(gaussian_report):
    report = gaussian_report
    data = make_synthetic(n_samples=150, n_features=6, n_components=2, family="gaussian", seed=3)
    y = data.data[report.subset_rows].double()
    weight = torch.as_tensor(report.parameters["weight"]).double()
    bias = torch.as_tensor(report.parameters["bias"]).double()

    # Exact posterior of z | y, θ for unit observation scale and prior precision 1.
    precision = torch.eye(2, dtype=torch.float64) + weight.T @ weight
    covariance = torch.linalg.inv(precision)
    mean = (y - bias) @ weight @ covariance

    deq = torch.as_tensor(report.results["AutoDEQ"].point).double()
    assert torch.allclose(deq, mean, atol=1e-4)
    model = pyro_deq.ExpFamPCA(6, 2, family="gaussian", weight=weight, bias=bias, name="exact")
    with torch.no_grad():
        exact_log_joint = float(model.log_joint(y, mean).sum())
    assert report.conditional.loc["AutoDEQ", "log joint at estimate"] == pytest.approx(exact_log_joint, rel=1e-5)

    laplace_draws = report.results["AutoDEQLaplace"].draws.reshape(-1, len(y), 2)
    empirical_sd = torch.as_tensor(laplace_draws.std(0, ddof=1))
    exact_sd = covariance.diagonal().sqrt().expand_as(empirical_sd)
    assert torch.allclose(empirical_sd.double(), exact_sd, rtol=0.15)


def test_compare_gaussian_laplace_matches_nuts(gaussian_report):
    table = gaussian_report.conditional
    laplace = table.loc["AutoDEQLaplace"]
    assert laplace["mean error (NUTS sd)"] < 0.25
    assert abs(laplace["sd ratio to NUTS"] - 1.0) < 0.2
    assert abs(laplace["90% interval coverage of NUTS draws"] - 0.9) < 0.06


def test_compare_deq_map_agrees_with_autodelta(gaussian_report):
    table = gaussian_report.conditional
    assert table.loc["AutoDEQ", "RMS distance to DEQ MAP"] == 0.0
    assert table.loc["AutoDelta", "RMS distance to DEQ MAP"] < 0.05
    assert table.loc["AutoDEQ", "log joint at estimate"] >= table.loc["AutoDelta", "log joint at estimate"] - 1e-3


def test_compare_point_estimates_have_no_spread(gaussian_report):
    table = gaussian_report.conditional
    for name in ("AutoDEQ", "AutoDelta"):
        assert table.loc[name, "kind"] == "point estimate"
        assert np.isnan(table.loc[name, "sd ratio to NUTS"])
        assert np.isnan(table.loc[name, "90% interval coverage of NUTS draws"])


def test_compare_nuts_diagnostics(gaussian_report):
    diagnostics = gaussian_report.nuts_diagnostics
    assert diagnostics["chains"] == 2
    assert diagnostics["max R-hat"] < 1.1
    assert diagnostics["divergences"] == 0


def test_compare_nuts_divergences_in_arviz(gaussian_report):
    diverging = gaussian_report.results["NUTS"].extra["diverging"]
    assert diverging.shape == (2, TINY.nuts_samples)
    posterior_groups = str(gaussian_report.arviz["NUTS"])
    assert "sample_stats" in posterior_groups
    assert "sample_stats" not in str(gaussian_report.arviz["AutoDEQ"])


def test_compare_joint_table_rotation_invariant(gaussian_report):
    joint = gaussian_report.joint
    assert list(joint.index) == ["AutoDEQ", "AutoDEQLaplace (Laplace objective)", "AutoNormal"]
    assert joint.loc["AutoDEQ", "max principal angle to AutoDEQ (deg)"] < 1e-6
    assert np.all(np.isfinite(joint["held-out Laplace log-lik per row"]))


def test_compare_leaves_caller_params_alone():
    pyro.clear_param_store()
    data = make_synthetic(n_samples=60, n_features=5, n_components=2, family="bernoulli", seed=0)
    model = pyro_deq.ExpFamPCA(5, 2, family="bernoulli")
    before = model.weight.detach().clone()
    settings = Settings(subset=4, train_steps=5, svi_steps=20, nuts_samples=20, nuts_warmup=20, num_draws=50)
    compare(model, data.data, methods=["AutoDEQ", "AutoDelta"], settings=settings, joint=False)
    assert torch.equal(model.weight.detach(), before)


def test_compare_rejects_bad_arguments():
    data = make_synthetic(n_samples=30, n_features=5, n_components=2, family="bernoulli", seed=0)
    model = pyro_deq.ExpFamPCA(5, 2, family="bernoulli")
    with pytest.raises(ValueError, match="unknown names.*'SMC'"):
        compare(model, data.data, methods=["AutoDEQ", "SMC"])
    with pytest.raises(ValueError, match="`subset` is 500"):
        compare(model, data.data, subset=500)
    with pytest.raises(ValueError, match="poisson|`y`"):
        compare(pyro_deq.ExpFamPCA(5, 2, family="poisson"), data.data - 0.5)


def test_report_save_writes_every_file(gaussian_report, tmp_path):
    from pyro_deq import plotting

    out = tmp_path / "report"
    umask = os.umask(0o022)
    try:
        gaussian_report.save(out, figures=plotting.report_figures(gaussian_report))
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755
    names = sorted(p.name for p in out.iterdir())
    for expected in ("report.md", "conditional.csv", "joint.csv", "metadata.json", "arviz",
                     "latents.png", "map_against_nuts.png", "forest.png", "residual_traces.png",
                     "training_curves.png"):
        assert expected in names
    assert len(list((out / "arviz").glob("*.nc"))) == 6
    assert "![latents](latents.png)" in (out / "report.md").read_text()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gaussian_report.save(out)
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
