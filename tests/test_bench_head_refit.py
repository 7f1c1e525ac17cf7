"""bench/head_refit.py on a tiny checkpoint over tiny shards: the plain refit is the prediction's own head, every
column is filled, another head is refused, and a shifted copy moves the image and fills the border with the edge."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import head_refit  # noqa: E402
from pudnet import PudNet  # noqa: E402
from pudnet.model import checkpoint  # noqa: E402
from tiny_runs import TINY, record, two_tiny_sources  # noqa: E402


def tiny_checkpoint(base: Path, head: str) -> Path:
    """An untrained PudNet checkpoint with the record jobs/train.py writes, over two tiny sources."""
    roots, split = two_tiny_sources(base)
    torch.manual_seed(0)
    model = PudNet(dataclasses.replace(TINY, head=head))
    checkpoint.save(base / head, model, split,
                    extra=record(model, split, roots, sources=("seen", "other"), heldout_sources=("other",)))
    return base / head


def test_every_refit_is_scored_and_the_plain_one_is_the_predictions_head(tmp_path):
    out = tmp_path / "refit.md"
    rows = head_refit.main([str(tiny_checkpoint(tmp_path, "ridge")), "--shots", "4", "0", "--out", str(out)])["rows"]
    settings = [(r["task"].split(":")[0], r["shots"]) for r in rows]
    assert settings == [(t, s) for t in ("intra", "inter") for s in ("4", "all")]
    for r in rows:
        # the prediction's head mixes train-mode features of its BatchNorm sample in: within one test image here
        assert abs(r["refit"] - r["pudnet"]) <= 1 / 12 + 1e-6
        for key in ("mirrored", *(f"shifted_{n}" for n in head_refit.COPIES), *head_refit.TRANSFORMS):
            assert 0 <= r[key] <= r.get(f"{key}_oracle", 1) <= 1
    assert out.read_text().count("\n| ") == 1 + len(rows) and json.loads(out.with_suffix(".json").read_text())["rows"]


def test_a_checkpoint_with_another_head_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        head_refit.main([str(tiny_checkpoint(tmp_path, "prototype")), "--out", str(tmp_path / "x.md")])
    assert "refits the ridge head" in capsys.readouterr().err


def test_a_shifted_copy_moves_the_image_and_repeats_its_edge():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    assert torch.equal(head_refit.shifted(x, 0, 0), x)
    down = head_refit.shifted(x, -1, 0)                   # row i shows row i - 1; row 0 repeats the top edge
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and torch.equal(down[..., 0, :], x[..., 0, :])
    right = head_refit.shifted(x, 0, 2)
    assert torch.equal(right[..., :-2], x[..., 2:]) and torch.equal(right[..., -1], x[..., -1])
