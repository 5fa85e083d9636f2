"""Tests of ``pyro-deq fit``: every input format, the outputs, reproducibility and bad input."""

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse
import torch

from pyro_deq.cli import io
from pyro_deq.cli.main import main

STEPS = ["--steps", "5"]


def write_csv(path, counts, names=None, delimiter=","):
    lines = [] if names is None else [delimiter.join(names)]
    lines += [delimiter.join(str(value) for value in row) for row in counts.tolist()]
    path.write_text("\n".join(lines) + "\n")
    return path


def fit(path, out, *extra):
    return main(["fit", str(path), "--family", "poisson", "--latent-dim", "2", "--out", str(out),
                 "--quiet", *STEPS, *extra])


def assert_outputs(out, n_rows, n_features):
    latents = pd.read_csv(out / "latents.csv")
    loadings = pd.read_csv(out / "loadings.csv")
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    state = torch.load(out / "params.pt")
    assert list(latents.columns) == ["row", "z_1", "z_2", "sd_1", "sd_2"]
    assert latents.shape == (n_rows, 5)
    assert np.isfinite(latents.to_numpy()).all()
    assert loadings.shape == (n_features, 4)
    assert np.isfinite(loadings.drop(columns="feature").to_numpy()).all()
    assert math.isfinite(diagnostics["final_loss"])
    assert diagnostics["solver"]["fraction_converged"] == 1.0
    assert all(torch.isfinite(value).all() for value in state.values())
    return latents, loadings, diagnostics


def assert_nothing_written(tmp_path, out):
    assert not out.exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_fit_csv_with_header(tmp_path, reuters_counts, capsys):
    counts, names = reuters_counts
    path = write_csv(tmp_path / "reuters.csv", counts, names)
    assert fit(path, tmp_path / "out") == 0
    _, loadings, diagnostics = assert_outputs(tmp_path / "out", *counts.shape)
    assert list(loadings["feature"]) == names
    assert diagnostics["degenerate_columns"]["found"]
    assert "--drop-degenerate" in capsys.readouterr().err


def test_fit_mtx_matches_csv(tmp_path, reuters_counts):
    counts, names = reuters_counts
    scipy.io.mmwrite(tmp_path / "reuters.mtx", scipy.sparse.coo_matrix(counts.numpy()))
    write_csv(tmp_path / "reuters.csv", counts, names)
    assert fit(tmp_path / "reuters.mtx", tmp_path / "mtx") == 0
    assert fit(tmp_path / "reuters.csv", tmp_path / "csv") == 0
    from_mtx, _, _ = assert_outputs(tmp_path / "mtx", *counts.shape)
    from_csv = pd.read_csv(tmp_path / "csv" / "latents.csv")
    assert np.allclose(from_mtx.to_numpy(), from_csv.to_numpy())


def test_fit_npy_and_npz(tmp_path, reuters_counts):
    counts, _ = reuters_counts
    np.save(tmp_path / "dense.npy", counts.numpy())
    np.savez(tmp_path / "dense.npz", counts=counts.numpy())
    scipy.sparse.save_npz(tmp_path / "sparse.npz", scipy.sparse.csr_matrix(counts.numpy()))
    for name in ("dense.npy", "dense.npz", "sparse.npz"):
        out = tmp_path / f"out-{name}"
        assert fit(tmp_path / name, out) == 0
        assert_outputs(out, *counts.shape)


def test_fit_same_seed_reproducible(tmp_path, reuters_counts):
    counts, _ = reuters_counts
    np.save(tmp_path / "counts.npy", counts.numpy())
    assert fit(tmp_path / "counts.npy", tmp_path / "a", "--seed", "3", "--batch-size", "16") == 0
    assert fit(tmp_path / "counts.npy", tmp_path / "b", "--seed", "3", "--batch-size", "16") == 0
    for name in ("latents.csv", "loadings.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_drop_degenerate_reports_columns(tmp_path, reuters_counts, capsys):
    counts, names = reuters_counts
    zero_columns = (counts.sum(0) == 0).nonzero().flatten().tolist()
    path = write_csv(tmp_path / "reuters.csv", counts, names)
    assert fit(path, tmp_path / "out", "--drop-degenerate") == 0
    _, loadings, diagnostics = assert_outputs(tmp_path / "out", counts.shape[0], counts.shape[1] - len(zero_columns))
    dropped = [names[index] for index in zero_columns]
    assert diagnostics["degenerate_columns"]["dropped"] == dropped
    assert not set(dropped) & set(loadings["feature"])
    assert dropped[0] in capsys.readouterr().err


def test_mask_missing_and_offset_column(tmp_path):
    path = tmp_path / "small.tsv"
    path.write_text("a\tb\tlog_size\n1\t\t0.5\n0\t3\t1.0\n2\t1\t0.0\n")
    assert fit(path, tmp_path / "out", "--mask-missing", "--offset-column", "log_size") == 0
    _, loadings, diagnostics = assert_outputs(tmp_path / "out", 3, 2)
    assert list(loadings["feature"]) == ["a", "b"]
    assert diagnostics["data"]["n_missing"] == 1


def test_force_replaces_earlier_output(tmp_path, reuters_counts):
    counts, _ = reuters_counts
    np.save(tmp_path / "counts.npy", counts.numpy())
    out = tmp_path / "out"
    assert fit(tmp_path / "counts.npy", out) == 0
    (out / "old.txt").write_text("old")

    assert fit(tmp_path / "counts.npy", out, "--force") == 0
    assert not (out / "old.txt").exists()
    assert (out / ".pyro-deq-output").is_file()
    assert_outputs(out, *counts.shape)


def test_force_spares_foreign_directory(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = write_csv(out / "counts.csv", torch.ones(4, 3), ["a", "b", "c"])

    assert fit(path, out, "--force") == 2
    error = capsys.readouterr().err
    assert "inside it" in error
    assert sorted(entry.name for entry in out.iterdir()) == ["counts.csv", "notes.txt"]

    other = tmp_path / "other.csv"
    other.write_text("1,2\n3,4\n")
    assert fit(other, out, "--force") == 2
    error = capsys.readouterr().err
    assert "not written by pyro-deq" in error
    assert "notes.txt" in error
    assert sorted(entry.name for entry in out.iterdir()) == ["counts.csv", "notes.txt"]


def test_unwritable_parent_rejected_before_reading(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    # Root may write anywhere, so the permission check itself is simulated.
    real_access = os.access
    monkeypatch.setattr(io.os, "access", lambda path, mode: Path(path) != parent and real_access(path, mode))

    assert fit(tmp_path / "absent.csv", parent / "out") == 2
    error = capsys.readouterr().err
    assert "not writable" in error
    assert "absent.csv" not in error
    assert list(parent.iterdir()) == []


def test_output_directory_gets_umask_permissions(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("1,2\n3,4\n0,1\n")
    umask = os.umask(0o022)
    try:
        assert fit(path, tmp_path / "out", "--family", "poisson") == 0
    finally:
        os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_empty_out_is_a_usage_error(tmp_path, capsys):
    assert fit(tmp_path / "absent.csv", "") == 2
    assert "empty string" in capsys.readouterr().err


BAD_CSV_CASES = {
    "ragged row": ("1,2,3\n4,5\n", ["line 2, column 3", "same number of cells"]),
    "non-numeric cell": ("1,2,3\n4,x5,6\n", ["line 2, column 2", "'x5'", "--mask-missing"]),
    "negative under poisson": ("1,2,3\n4,-5,6\n", ["line 2, column 2", "negative", "--family gaussian"]),
    "non-integer counts": ("1,2,3\n4,5,0.25\n", ["line 2, column 3", "not integer-valued", "offset"]),
    "missing without mask": ("a,b\n1,2\n3,NA\n", ["line 3, column 2", "missing value", "--mask-missing"]),
    "infinite value": ("1,2\n3,inf\n", ["line 2, column 2", "infinite", "--mask-missing"]),
    "empty file": ("", ["empty"]),
}


@pytest.mark.parametrize("case", list(BAD_CSV_CASES))
def test_bad_csv_exits_2_and_writes_nothing(case, tmp_path, capsys):
    text, expected = BAD_CSV_CASES[case]
    path = tmp_path / "data.csv"
    path.write_text(text)
    out = tmp_path / "out"
    assert fit(path, out) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("pyro-deq: error: ")
    assert str(path) in error
    for fragment in expected:
        assert fragment in error
    assert "Traceback" not in error
    assert_nothing_written(tmp_path, out)


def test_missing_file_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert fit(tmp_path / "absent.csv", out) == 2
    error = capsys.readouterr().err
    assert "absent.csv" in error
    assert "file not found" in error
    assert_nothing_written(tmp_path, out)


def test_existing_out_rejected_before_reading(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert fit(tmp_path / "absent.csv", out) == 2
    error = capsys.readouterr().err
    assert "already exists" in error
    assert "--force" in error
    assert list(out.iterdir()) == []


def test_npy_missing_value_position(tmp_path, capsys):
    values = np.ones((3, 2))
    values[2, 1] = np.nan
    np.save(tmp_path / "data.npy", values)
    assert fit(tmp_path / "data.npy", tmp_path / "out") == 2
    assert "row 3, column 2 (counted from 1)" in capsys.readouterr().err


def test_binomial_needs_total_count(tmp_path, capsys):
    path = write_csv(tmp_path / "data.csv", torch.ones(2, 2, dtype=torch.int64))
    status = main(["fit", str(path), "--family", "binomial", "--latent-dim", "1", "--out", str(tmp_path / "out")])
    assert status == 2
    assert "--total-count" in capsys.readouterr().err


def test_binomial_count_error_names_options(tmp_path, capsys):
    path = write_csv(tmp_path / "data.csv", torch.tensor([[1, 10], [2, 3]]))
    out = tmp_path / "out"
    status = main(["fit", str(path), "--family", "binomial", "--total-count", "3", "--latent-dim", "1",
                   "--out", str(out)])
    assert status == 2
    error = capsys.readouterr().err
    assert "Raise --total-count to at least 10 there." in error
    assert "tensor" not in error
    assert_nothing_written(tmp_path, out)


def test_latent_dim_above_columns_exits_2(tmp_path, capsys):
    path = write_csv(tmp_path / "data.csv", torch.ones(5, 3, dtype=torch.int64))
    out = tmp_path / "out"
    assert main(["fit", str(path), "--family", "poisson", "--latent-dim", "4", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "--latent-dim 4 exceeds the 3 columns of" in error
    assert "choose at most 3" in error
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("seed", ["-1", "4294967296", "1.5"])
def test_seed_out_of_range_exits_2(seed, tmp_path, capsys):
    path = write_csv(tmp_path / "data.csv", torch.ones(5, 3, dtype=torch.int64))
    out = tmp_path / "out"
    assert fit(path, out, "--seed", seed) == 2
    error = capsys.readouterr().err
    assert "--seed" in error
    assert f"expected an integer from 0 to 4294967295, got '{seed}'" in error
    assert_nothing_written(tmp_path, out)


def test_invalid_option_value_exits_2(capsys):
    assert main(["fit", "x.csv", "--family", "poisson", "--latent-dim", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pyro-deq: error: ")
    assert "positive integer" in error


def test_console_script_help():
    result = subprocess.run(["pyro-deq", "fit", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--latent-dim" in result.stdout
    assert "default: 500" in result.stdout
