"""bench/bank_scale.py's pieces that decide what is compared: the three runs' meta-train class sets are nested
and seeded, and the report redraws from saved numbers. The training runs themselves are the benchmark's."""
import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bank_scale  # noqa: E402


def test_the_three_class_sets_are_nested_and_seeded():
    classes = [f"mnist/{d}" for d in range(10)] + [f"emoji/s{i}" for i in range(5)] + [f"icons/i{i}" for i in range(50)]
    tiers = bank_scale.tiers(classes, mid=40, seed=0)
    small, mid, full = tiers.values()
    assert small == classes[:15] and len(mid) == 40 and full == classes
    assert set(small) < set(mid) < set(full)
    assert list(tiers) == ["6 default sources", "default + 25 bank classes", "full bank"]
    assert bank_scale.tiers(classes, mid=40, seed=0) == tiers != bank_scale.tiers(classes, mid=40, seed=1)
    assert bank_scale.tiers(classes, mid=0, seed=0) == {"6 default sources": small, "full bank": full}  # end points


def test_full_only_fits_the_full_bank_alone_and_set_reaches_every_run_config(tmp_path):
    classes = [f"mnist/{d}" for d in range(10)] + [f"icons/i{i}" for i in range(50)]
    args = argparse.Namespace(mid=30, seed=0, full_only=True, runs=[])
    assert bank_scale.runs_to_fit(classes, args) == {"full bank": classes}
    assert len(bank_scale.runs_to_fit(classes, argparse.Namespace(mid=30, seed=0, full_only=False, runs=[]))) == 3
    out = ["--out", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png")]
    with pytest.raises(ValueError, match="within_source=2.0"):      # checked by TrainConfig before any training
        bank_scale.main(["--set", "within_source=2", *out])
    with pytest.raises(ValueError, match="unknown key 'no_such_field'"):
        bank_scale.main(["--set", "no_such_field=1", *out])


def test_runs_names_the_six_sources_the_full_bank_or_six_plus_one_bank_source(tmp_path):
    classes = ([f"mnist/{d}" for d in range(10)] + [f"icons/i{i}" for i in range(20)] + [f"glyphs/g{i}" for i in range(30)]
               + [f"signs/s{i}" for i in range(5)])
    args = argparse.Namespace(mid=0, seed=0, full_only=False, runs=["glyphs", "six", "full"])
    runs = bank_scale.runs_to_fit(classes, args)
    assert list(runs) == ["6 default sources + glyphs", "6 default sources", "full bank"]
    assert runs["6 default sources + glyphs"] == classes[:10] + classes[30:60]
    assert runs["6 default sources"] == classes[:10] and runs["full bank"] == classes
    for bad in (["--runs", "glyph"], ["--runs"], ["--runs", "six", "--full-only"]):   # before the bank loads
        with pytest.raises(SystemExit):
            bank_scale.main([*bad, "--out", str(tmp_path / "r.md")])
    with pytest.raises(ValueError, match="no meta-train classes"):
        bank_scale.runs_to_fit(classes, argparse.Namespace(mid=0, seed=0, full_only=False, runs=["emoji_sets"]))


def _result(methods):
    return {"methods": {m: {"accuracy": 0.5, "ci95": 0.01, "seconds": 0.1, "tasks": 3} for m in methods}}


def test_the_report_redraws_from_its_json(tmp_path, monkeypatch):
    def run(first, n):
        methods = bank_scale.EVERY_MODEL + (bank_scale.FIRST_MODEL_ONLY if first else ())
        whole = methods[1:] + (bank_scale.WHOLE_ONLY if first else ())
        return {"name": f"run {n}", "classes": n, "steps": 5, "seed": 0, "train_s": 60, "eval_s": 30,
                "intra_classes": {"default": 12, "all": 40},
                "tasks": {s: _result(methods) for s in ("intra (default sources)", "intra (all)", "inter")},
                "whole": {t: {"classes": [], "shots": {str(s): _result(whole) for s in bank_scale.WHOLE_SHOTS}}
                          for t in ("intra", "inter: fashion_mnist")}}
    out = tmp_path / "r.md"
    out.with_suffix(".json").write_text(json.dumps({"command": "cmd", "runs": [run(True, 50), run(False, 300)]}))
    bank_scale.main(["--out", str(out), "--plot", str(tmp_path / "r.png"), "--report-only"])
    text = out.read_text()
    assert "### `cmd`" in text and "| 300 | run 300 | 1.0 min | 50.0 ± 1.0 |" in text
    assert (tmp_path / "r.png").stat().st_size > 0
    curve = [run(True, 50), run(False, 300)]
    curve[1]["name"] = "default + 248 bank classes"           # the middle run is a point of the curve, not a bar
    out.with_suffix(".json").write_text(json.dumps({"command": "cmd", "runs": curve}))
    drawn = []
    monkeypatch.setattr(bank_scale, "plot_against_six", lambda *a: drawn.append(a))
    bank_scale.main(["--out", str(out), "--plot", str(tmp_path / "curve.png"), "--report-only"])
    assert not drawn and (tmp_path / "curve.png").stat().st_size > 0
    monkeypatch.undo()
    named = [run(True, 50), run(False, 60), run(False, 70)]
    named[0]["name"], named[1]["name"], named[2]["name"] = "6 default sources", "6 default sources + icons", "full bank"
    out.with_suffix(".json").write_text(json.dumps({"command": "cmd", "runs": named}))
    bank_scale.main(["--out", str(out), "--plot", str(tmp_path / "bars.png"), "--report-only"])   # --runs: bars
    assert (tmp_path / "bars.png").stat().st_size > 0 and "| 60 | 6 default sources + icons |" in out.read_text()
