"""bench/gpu_check.sh runs end to end on the CPU with tiny sizes, so it still works the day a GPU is lent."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.integration
def test_gpu_check_runs_tiny_on_cpu_and_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path), "--tiny", "--repeats", "1"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["tiny"] and {r["arch"] for r in result["rows"]} == {"convnet", "resnet18"}
    assert all(r["predict_ms_per_image"] > 0 and r["adam_ms_per_image"] > 0 for r in result["rows"])
    assert result["meta_step"]["meta_step_s"] > 0
    assert "| resnet18 | 16 | 3 | 2 |" in (tmp_path / "gpu_check.md").read_text()
