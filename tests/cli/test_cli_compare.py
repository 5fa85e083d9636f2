"""Tests of the ``pyro-deq compare`` wiring, with a stand-in for ``pyro_deq.comparison.compare``."""

import os
import sys
import types

import matplotlib.pyplot as plt
import pytest

import pyro_deq.comparison
from pyro_deq.cli.main import main


class FakeReport:
    def to_markdown(self):
        return "| method | time |\n|---|---|\n| AutoDEQ | 1 |"

    def save(self, directory, figures, overwrite=False):
        (directory / "report.md").write_text(self.to_markdown())
        for name, figure in figures.items():
            figure.savefig(directory / f"{name}.png")


@pytest.fixture
def fake_compare(monkeypatch):
    calls = []

    def compare(model, y, **kwargs):
        calls.append((model, y, kwargs))
        return FakeReport()

    def report_figures(report):
        figure, _ = plt.subplots()
        return {"latents": figure}

    monkeypatch.setattr(pyro_deq.comparison, "compare", compare, raising=False)
    monkeypatch.setitem(sys.modules, "pyro_deq.plotting", types.SimpleNamespace(report_figures=report_figures))
    return calls


def test_compare_passes_options_and_saves(tmp_path, fake_compare, capsys, monkeypatch):
    monkeypatch.setenv("PYRO_DEQ_QUICK", "1")
    out = tmp_path / "report"
    status = main(["compare", "--dataset", "digits", "--latent-dim", "3", "--subset", "20",
                   "--seed", "4", "--out", str(out), "--quiet"])
    assert status == 0
    model, y, kwargs = fake_compare[0]
    assert model.n_components == 3
    assert tuple(y.shape) == (1797, 64)
    assert kwargs["quick"] is True
    assert kwargs["subset"] == 20
    assert kwargs["seed"] == 4
    assert kwargs["dataset_name"] == "digits"
    assert len(kwargs["labels"]) == 1797
    assert (out / "report.md").exists()
    assert (out / "latents.png").exists()
    assert "AutoDEQ" in capsys.readouterr().out


def test_compare_family_outside_support_exits_2(tmp_path, fake_compare, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--family", "poisson", "--dataset", "breast_cancer", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "breast_cancer" in error
    assert "Use --family gaussian" in error
    assert "(counted from 1)" in error
    assert "family='" not in error
    assert not out.exists()
    assert fake_compare == []


@pytest.mark.parametrize("arguments, expected", [
    (["--latent-dim", "65"], "--latent-dim 65 exceeds the 64 columns of data set digits; choose at most 64"),
    (["--seed", "-1"], "expected an integer from 0 to 4294967295, got '-1'"),
    (["--dataset", "breast_cancer", "--family", "binomial"], "--family binomial needs --total-count N"),
])
def test_compare_bad_option_exits_2(arguments, expected, tmp_path, fake_compare, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--out", str(out), *arguments]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()
    assert fake_compare == []


def test_compare_failure_leaves_nothing(tmp_path, fake_compare, monkeypatch):
    def failing_save(self, directory, figures, overwrite=False):
        (directory / "report.md").write_text("partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(FakeReport, "save", failing_save)
    out = tmp_path / "report"
    assert main(["compare", "--out", str(out), "--quiet"]) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_subset_larger_than_training_rows_exits_2(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--quick", "--subset", "100000", "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--subset 100000" in error
    assert "training rows" in error
    assert "Traceback" not in error
    assert not out.exists()


def test_compare_output_gets_umask_permissions(tmp_path, fake_compare):
    out = tmp_path / "report"
    umask = os.umask(0o022)
    try:
        assert main(["compare", "--out", str(out), "--quiet"]) == 0
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--dataset", "synthetic", "--scale", "2"], "--scale applies only to the gaussian family"),
        (["--dataset", "reuters", "--total-count", "5"], "--total-count applies only to the binomial family"),
    ],
)
def test_parameter_of_another_family_exits_2(arguments, expected, tmp_path, fake_compare, capsys):
    out = tmp_path / "report"
    assert main(["compare", *arguments, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert expected in error
    assert "drop it" in error
    assert fake_compare == []


def test_binarized_digits_named_in_report(tmp_path, fake_compare):
    assert main(["compare", "--family", "bernoulli", "--out", str(tmp_path / "report"), "--quiet"]) == 0
    _, y, kwargs = fake_compare[0]
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert kwargs["dataset_name"] == "digits, binarized: 1 where the count exceeds 8 of 16"
