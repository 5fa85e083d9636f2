"""``pyro-deq compare`` end to end with the real comparison, at the quick sizes."""

import csv
import json

from pyro_deq.cli.main import main


def test_compare_quick_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "report"
    status = main(["compare", "--dataset", "synthetic", "--quick", "--seed", "1", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out

    assert status == 0
    assert "## Conditional on θ" in printed
    for name in ("report.md", "conditional.csv", "joint.csv", "metadata.json", "latents.png",
                 "map_against_nuts.png", "forest.png", "residual_traces.png", "training_curves.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "arviz").iterdir()) == sorted(
        f"{m}.nc" for m in ("AutoDEQ", "AutoDEQLaplace", "AutoDelta", "AutoNormal",
                            "AutoLowRankMultivariateNormal", "NUTS")
    )
    assert json.loads((out / "metadata.json").read_text())["quick"] is True

    with open(out / "conditional.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    # The DEQ MAP and AutoDelta's SVI mode target the same point.
    assert float(rows["AutoDelta"]["RMS distance to DEQ MAP"]) < 0.05
    assert float(rows["AutoDEQ"]["RMS distance to DEQ MAP"]) == 0.0
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
