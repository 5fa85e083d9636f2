"""Tests of the ArviZ adapter under ArviZ 0.x and ArviZ 1.0 or later.

The adapter is loaded by file path, because importing the ``pyro_deq`` package
imports torch, which the ArviZ 1.x test environment does not have.
"""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ADAPTER_PATH = Path(__file__).parents[2] / "pyro_deq" / "comparison" / "arviz_adapter.py"


def _load_adapter():
    spec = importlib.util.spec_from_file_location("arviz_adapter_under_test", ADAPTER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


adapter = _load_adapter()
NEW_ARVIZ = int(adapter.ARVIZ_VERSION.split(".")[0]) >= 1


def _sampled(n_chains=4, n_draws=300, n_rows=5, n_components=2, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_chains, n_draws, n_rows, n_components))
    return {"z": z + np.arange(n_rows)[:, None]}


def test_adapter_imports_no_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('adapter', {str(ADAPTER_PATH)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert 'torch' not in sys.modules, 'the adapter imported torch'\n"
        "assert not any(name.startswith('pyro_deq') for name in sys.modules)\n"
    )
    completed = subprocess.run([sys.executable, "-W", "error", "-c", code],
                               capture_output=True, text=True)

    assert completed.returncode == 0, completed.stderr


def test_to_arviz_type_by_version():
    data = adapter.to_arviz(_sampled(), method="nuts")

    if NEW_ARVIZ:
        import xarray as xr
        assert isinstance(data, xr.DataTree)
    else:
        import arviz as az
        assert isinstance(data, az.InferenceData)


def test_sampled_draws_layout():
    data = adapter.to_arviz(_sampled(), method="nuts", observed={"y": np.zeros((5, 3))})
    posterior = adapter._posterior(data)

    assert posterior["z"].dims == ("chain", "draw", "row", "component")
    assert posterior["z"].shape == (4, 300, 5, 2)
    assert posterior.attrs["method"] == "nuts"
    assert posterior.attrs["point_estimate"] == 0
    assert not adapter.is_point_estimate(data)
    assert "observed_data" in adapter._group_names(data)
    assert data["observed_data"]["y"].dims == ("row", "feature")


@pytest.mark.parametrize("shape", [(5, 2), (1, 1, 5, 2)])
def test_point_estimate_layout(shape):
    point = np.arange(10.0).reshape(shape)
    data = adapter.to_arviz({"z": point}, method="deq", point_estimate=True,
                            sample_stats={"converged": np.ones(5, dtype=np.int8)})
    posterior = adapter._posterior(data)

    assert posterior["z"].shape == (1, 1, 5, 2)
    assert posterior.attrs["point_estimate"] == 1
    assert adapter.is_point_estimate(data)
    assert data["sample_stats"]["converged"].shape == (1, 1, 5)
    np.testing.assert_array_equal(posterior["z"].values.reshape(5, 2), point.reshape(5, 2))


def test_custom_dims_and_coords():
    draws = {"w": np.random.default_rng(3).normal(size=(2, 10, 3))}
    data = adapter.to_arviz(draws, method="svi", dims={"w": ["feature"]},
                            coords={"feature": ["a", "b", "c"]})
    table = adapter.summarize(data)

    assert list(table.index) == ["w[a]", "w[b]", "w[c]"]


def test_point_estimate_wrong_shape():
    with pytest.raises(ValueError, match=r"\(1, 5, 2\)"):
        adapter.to_arviz({"z": np.zeros((1, 5, 2))}, method="deq", point_estimate=True)


def test_draws_without_sample_axes():
    with pytest.raises(ValueError, match=r"\(chain, draw, \*event\).*\(7,\)"):
        adapter.to_arviz({"s": np.zeros(7)}, method="nuts")


def test_single_chain_fallback_warns():
    draws = np.zeros((100, 5, 2))

    with pytest.warns(UserWarning, match=r"\(100, 5, 2\).*1 chain of 100 draws"):
        data = adapter.to_arviz({"z": draws}, method="laplace")

    assert adapter._posterior(data)["z"].shape == (1, 100, 5, 2)


def test_summarize_sampled_columns():
    data = adapter.to_arviz(_sampled(), method="nuts")
    table = adapter.summarize(data)

    assert list(table.columns) == ["mean", "sd", "hdi_5%", "hdi_95%", "ess_bulk", "ess_tail", "r_hat"]
    assert list(table.index[:3]) == ["z[0, 0]", "z[0, 1]", "z[1, 0]"]
    assert table.attrs["note"] == ""
    assert table.notna().all().all()
    assert (table["hdi_5%"] < table["mean"]).all()
    assert (table["mean"] < table["hdi_95%"]).all()
    assert table["r_hat"].between(0.98, 1.05).all()
    assert (table["ess_bulk"] > 100).all()
    np.testing.assert_allclose(table["mean"].values[::2], np.arange(5), atol=0.15)


def test_summarize_matches_arviz():
    data = adapter.to_arviz(_sampled(), method="nuts")
    ours = adapter.summarize(data)

    if NEW_ARVIZ:
        import arviz_stats
        reference = arviz_stats.summary(data, kind="all", round_to="none")
    else:
        import arviz as az
        reference = az.summary(data, hdi_prob=0.9, round_to="none")

    for column in ("mean", "ess_bulk", "ess_tail", "r_hat"):
        np.testing.assert_allclose(ours[column].values, reference[column].values.astype(float),
                                   rtol=1e-6)
    np.testing.assert_allclose(ours["sd"].values, reference["sd"].values.astype(float), rtol=1e-2)
    if not NEW_ARVIZ:
        for column in ("hdi_5%", "hdi_95%"):
            np.testing.assert_allclose(ours[column].values, reference[column].values, rtol=1e-6)


def test_summarize_point_estimate():
    data = adapter.to_arviz({"z": np.ones((5, 2))}, method="deq", point_estimate=True)
    table = adapter.summarize(data)

    assert (table["mean"] == 1.0).all()
    for column in ("sd", "hdi_5%", "hdi_95%", "ess_bulk", "ess_tail", "r_hat"):
        assert table[column].isna().all(), column
    assert table.attrs["point_estimate"] is True
    assert "point estimate" in table.attrs["note"]
    assert "deq" in table.attrs["note"]


def test_summarize_one_chain():
    data = adapter.to_arviz(_sampled(n_chains=1), method="laplace")
    table = adapter.summarize(data)

    assert table["sd"].notna().all()
    assert table["r_hat"].isna().all()
    assert table["ess_bulk"].isna().all()
    assert "at least 2 chains" in table.attrs["note"]


def test_summarize_var_names_and_prob():
    draws = {**_sampled(), "s": np.zeros((4, 300)) + np.random.default_rng(1).normal(size=(4, 300))}
    data = adapter.to_arviz(draws, method="nuts")
    table = adapter.summarize(data, var_names=["s"], hdi_prob=0.5)

    assert list(table.index) == ["s"]
    assert "hdi_25%" in table.columns
    assert "hdi_75%" in table.columns


@pytest.mark.parametrize("hdi_prob", [0.0, 1.0, 1.5])
def test_summarize_invalid_prob(hdi_prob):
    data = adapter.to_arviz(_sampled(), method="nuts")

    with pytest.raises(ValueError, match="`hdi_prob`"):
        adapter.summarize(data, hdi_prob=hdi_prob)


def test_hdi_of_uniform_grid():
    samples = np.linspace(0.0, 1.0, 1001)[:, None]
    lower, upper = adapter._hdi(samples, 0.9)

    assert upper[0] - lower[0] == pytest.approx(0.9)


def test_forest_data_rows():
    sampled = adapter.to_arviz(_sampled(), method="nuts")
    point = adapter.to_arviz({"z": np.zeros((5, 2))}, method="deq", point_estimate=True)
    table = adapter.forest_data({"nuts": sampled, "deq": point}, rows=[1, 3])

    assert list(table["method"]) == ["nuts"] * 4 + ["deq"] * 4
    assert list(table["entry"][:4]) == ["z[1, 0]", "z[1, 1]", "z[3, 0]", "z[3, 1]"]
    assert list(table["point_estimate"]) == [False] * 4 + [True] * 4
    assert table.loc[table["method"] == "deq", "hdi_5%"].isna().all()
    assert table.loc[table["method"] == "nuts", "hdi_5%"].notna().all()


def test_loo_rejects_point_estimate():
    data = adapter.to_arviz({"z": np.zeros((5, 2))}, method="deq", point_estimate=True,
                            log_likelihood={"y": np.zeros((5,))})

    with pytest.raises(ValueError, match="point estimate of deq"):
        adapter.loo(data)


def test_loo_sampled():
    rng = np.random.default_rng(2)
    data = adapter.to_arviz(_sampled(), method="nuts",
                            log_likelihood={"y": -1.0 + 0.1 * rng.normal(size=(4, 300, 5))})
    result = adapter.loo(data)

    elpd, p_loo = (result.elpd, result.p) if NEW_ARVIZ else (result["elpd_loo"], result["p_loo"])
    assert np.isfinite(elpd)
    assert p_loo > 0


def test_loo_without_log_likelihood():
    data = adapter.to_arviz(_sampled(), method="nuts")

    with pytest.raises(ValueError, match="log_likelihood"):
        adapter.loo(data)


def test_netcdf_round_trip(tmp_path):
    data = adapter.to_arviz({"z": np.arange(10.0).reshape(5, 2)}, method="deq",
                            point_estimate=True)
    path = tmp_path / "deq.nc"

    assert adapter.save_netcdf(data, path) == str(path)
    loaded = adapter.load_netcdf(path)

    assert adapter.is_point_estimate(loaded)
    assert adapter._posterior(loaded).attrs["method"] == "deq"
    np.testing.assert_array_equal(adapter._posterior(loaded)["z"].values.ravel(), np.arange(10.0))
    assert sorted(os.listdir(tmp_path)) == ["deq.nc"]


def test_netcdf_file_has_umask_permissions(tmp_path):
    data = adapter.to_arviz({"z": np.zeros((5, 2))}, method="deq", point_estimate=True)
    previous = os.umask(0o022)
    try:
        adapter.save_netcdf(data, tmp_path / "deq.nc")
    finally:
        os.umask(previous)

    assert (tmp_path / "deq.nc").stat().st_mode & 0o777 == 0o644


def test_netcdf_failed_write_leaves_nothing(tmp_path, monkeypatch):
    data = adapter.to_arviz(_sampled(), method="nuts")
    path = tmp_path / "nuts.nc"

    def fail(self, target, *args, **kwargs):
        Path(target).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(type(data), "to_netcdf", fail)
    with pytest.raises(OSError, match="disk full"):
        adapter.save_netcdf(data, path)

    assert os.listdir(tmp_path) == []


def test_is_point_estimate_without_attribute():
    data = adapter.to_arviz({"z": np.zeros((5, 2))}, method="deq", point_estimate=True)
    del data["posterior"].attrs["point_estimate"]

    assert adapter.is_point_estimate(data)


@pytest.mark.parametrize("flag, expected", [("true", True), ("false", False), (np.int64(0), False)])
def test_is_point_estimate_attribute_forms(flag, expected):
    data = adapter.to_arviz(_sampled(), method="nuts")
    data["posterior"].attrs["point_estimate"] = flag

    assert adapter.is_point_estimate(data) is expected


def test_summary_is_dataframe():
    data = adapter.to_arviz(_sampled(), method="nuts")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(adapter.summarize(data), pd.DataFrame)
