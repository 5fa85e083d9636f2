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
        "library_iterations", "library_max_residual", "bare_iterations", "bare_max_residual",
        "max_abs_difference", "library_seconds", "bare_seconds", "floor_seconds", "ratio",
        "model_iterations", "model_max_residual", "model_seconds", "model_ratio", "floor_ratio",
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
