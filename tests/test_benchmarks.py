"""Smoke tests: every benchmark script runs its ``--quick`` size in-process and writes finite figures."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` as a module; the folder is not a package."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_threads():
    """Put back the thread count, because each script sets it to one for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_quick(name: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    load_script(name).main(["--quick", "--repeats", "2", "--out", str(out)])
    return json.loads(out.read_text())


def assert_finite(figures: dict, keys) -> None:
    for key in keys:
        assert isinstance(figures[key], (int, float)), f"{key} = {figures[key]!r} is not a number"
        assert math.isfinite(figures[key]), f"{key} = {figures[key]!r} is not finite"


def test_bench_newton_quick(tmp_path, restore_threads):
    figures = run_quick("bench_newton", tmp_path)

    assert figures["dtype"] == "float32"
    assert figures["threads"] == 1
    assert_finite(figures, [
        "n_rows", "n_features", "n_components", "contraction_bound", "tol",
        "library_iterations", "library_max_residual", "library_certified_steps", "bare_iterations",
        "bare_max_residual", "max_abs_difference", "library_seconds", "bare_seconds", "floor_seconds", "ratio",
        "custom_iterations", "custom_max_residual", "custom_seconds", "custom_ratio", "floor_ratio",
    ])
    assert figures["library_converged_rows"] == figures["n_rows"]
    assert figures["library_seconds"] > 0
    assert figures["bare_seconds"] > 0


def test_bench_guides_quick(tmp_path, restore_threads):
    figures = run_quick("bench_guides", tmp_path)

    assert figures["dtype"] == "float32"
    assert figures["threads"] == 1
    assert figures["machine"]
    assert figures["torch"] == torch.__version__
    assert_finite(figures, [
        "n_rows", "n_features", "n_components", "contraction_bound",
        "deq_iterations", "deq_max_residual", "deq_fraction_converged", "deq_max_abs_error_vs_float64",
        "guide_vs_bare_max_abs_difference", "guide_seconds", "bare_solve_seconds", "guide_to_bare_ratio",
        "svi_best_lr", "svi_best_steps", "svi_best_seconds", "svi_to_guide_ratio",
    ])
    assert figures["contraction_bound"] == pytest.approx(8.0, rel=1e-4)
    assert figures["deq_fraction_converged"] == 1.0
    assert figures["guide_vs_bare_max_abs_difference"] <= 1e-5
    assert figures["svi_cap_hit"] == []
    assert figures["svi_sweep"], "the learning-rate sweep is empty"
    for run in figures["svi_sweep"]:
        assert_finite(run, ["lr", "steps", "seconds", "max_abs_difference"])
        assert run["reached"] is (run["max_abs_difference"] <= figures["svi_atol"])


def run_script(name: str, tmp_path: Path, *extra: str) -> dict:
    """Run ``main(["--quick", *extra, "--out", ...])`` of a benchmark and return the JSON it wrote."""
    out = tmp_path / f"{name}.json"
    load_script(name).main(["--quick", *extra, "--out", str(out)])
    return json.loads(out.read_text())


def assert_machine_described(figures: dict) -> None:
    assert figures["machine"]
    assert figures["torch"] == torch.__version__
    assert figures["cpu_count"] >= 1


def assert_time_or_not_reached(method: dict, key: str) -> None:
    value = method[key]
    if value != "not reached":
        assert_finite(method, [key])
        assert value > 0


def test_bench_map_quick(tmp_path, restore_threads):
    figures = run_script("bench_map", tmp_path, "--repeats", "1")

    assert_machine_described(figures)
    assert figures["dtype"] == "float32"
    assert {case["family"] for case in figures["cases"]} == {"bernoulli", "poisson"}
    expected = {"AutoDEQ newton", "AutoDEQ anderson", "AutoDEQ picard", "bare Newton loop",
                "scipy L-BFGS-B (float64)", "AutoDelta SVI"}
    for case in figures["cases"]:
        assert expected <= set(case["methods"])
        for name, method in case["methods"].items():
            assert_time_or_not_reached(method, "seconds_0.0001")
            assert_time_or_not_reached(method, "seconds_1e-06")
            assert_finite(method, ["best_error"])
        newton = case["methods"]["AutoDEQ newton"]
        assert newton["seconds_0.0001"] != "not reached"
        assert newton["fraction_converged"] == 1.0

    # torchdeq is optional: without it the competitor is skipped with a note.
    installed = importlib.util.find_spec("torchdeq") is not None
    for case in figures["cases"]:
        assert ("torchdeq anderson" in case["methods"]) is installed
    assert figures["torchdeq"].startswith("installed" if installed else "not installed")


def test_bench_laplace_quick(tmp_path, restore_threads):
    figures = run_script("bench_laplace", tmp_path, "--repeats", "1")

    assert_machine_described(figures)
    assert figures["n_rows"] == 5
    assert_finite(figures, [
        "laplace_seconds", "nuts_seconds", "nuts_to_laplace_ratio", "nuts_min_ess",
        "mean_error_median", "mean_error_max", "sd_error_median", "sd_error_max",
    ])
    assert figures["nuts_to_laplace_ratio"] > 1


def test_bench_training_quick(tmp_path, restore_threads):
    figures = run_script("bench_training", tmp_path)

    assert_machine_described(figures)
    assert set(figures["guides"]) == {"AutoDEQ", "AutoDEQLaplace (laplace objective)", "AutoDelta", "AutoNormal"}
    assert_finite(figures, ["target_heldout", "n_train", "n_heldout"])
    for name, guide in figures["guides"].items():
        assert_finite(guide, ["train_seconds", "seconds_per_step", "best_heldout", "final_heldout",
                              "seconds_to_target", "ratio_to_fastest"])
        assert guide["best_heldout"] >= figures["target_heldout"], name
        for point in guide["trace"]:
            assert_finite(point, ["step", "seconds", "heldout"])


def test_bench_amortization_quick(tmp_path, restore_threads):
    figures = run_script("bench_amortization", tmp_path, "--repeats", "1")

    assert_machine_described(figures)
    assert_finite(figures, ["deq_seconds", "encoder_seconds", "deq_flops_per_row", "encoder_flops_per_row"])
    for key in ("deq", "encoder", "encoder_on_training_rows"):
        assert_finite(figures[key], ["distance_mean", "distance_max", "log_joint_lost_mean", "log_joint_lost_max"])
    # z* maximizes the log joint, so no estimate can gain on it beyond float32 rounding.
    assert figures["encoder"]["log_joint_lost_mean"] >= -1e-3
    assert figures["deq"]["distance_max"] < 1e-2


@pytest.mark.slow  # two fresh Python processes, each importing torch and Pyro
def test_bench_scaling_quick(tmp_path, restore_threads):
    figures = run_script("bench_scaling", tmp_path)

    assert_machine_described(figures)
    assert figures["n_features"] == 784
    assert figures["n_components"] == 10
    assert [run["n_rows"] for run in figures["runs"]] == figures["sizes"]
    assert_finite(figures, ["log_log_slope"])
    for run in figures["runs"]:
        assert_finite(run, ["seconds", "peak_rss_bytes", "baseline_rss_bytes", "max_residual"])
        assert run["converged_rows"] == run["n_rows"]
        assert run["peak_rss_bytes"] >= run["baseline_rss_bytes"]


def test_bench_flops_quick(tmp_path, restore_threads):
    figures = run_script("bench_flops", tmp_path, "--repeats", "1")

    assert_machine_described(figures)
    assert figures["threads"] == 1
    for shape in figures["shapes"]:
        assert_finite(shape, ["flops", "solve_seconds", "floor_seconds", "solver_gflops", "matmul_gflops",
                              "fraction_of_matmul_rate"])
        assert shape["flops"] > 0
    assert figures["profile"], "the profile is empty"


@pytest.mark.slow  # a fresh Python process that imports torch and Pyro
def test_run_all_writes_json_and_tables(tmp_path):
    load_script("run_all").main(["--quick", "--out-dir", str(tmp_path), "--only", "bench_newton"])

    figures = json.loads((tmp_path / "bench_newton.json").read_text())
    assert_finite(figures, ["library_seconds", "bare_seconds"])
    assert (tmp_path / "bench_newton.md").read_text().startswith("# bench_newton")
    assert "bench_newton" in (tmp_path / "summary.md").read_text()
