"""`python jobs/serve.py RUN_DIR` serves a finished run's newest checkpoint with no editing (issue 8)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pudnet import PudNet, PudNetConfig

from pudnet.model import checkpoint
from serve_app.local import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_serve_job_serves_the_newest_checkpoint_of_a_run(tmp_path):
    run = tmp_path / "runs" / "pudnet-embedded"  # laid out as Ray Train leaves it: checkpoint_* with state.json
    for step in (100, 200):
        torch.manual_seed(step)
        model = PudNet(PudNetConfig(target_kwargs={"depth": 2, "width": 8}, encoder_width=8, hidden=16,
                                    layer_embedding=8, max_classes=3))
        checkpoint.save(run / f"checkpoint_{step // 100:06d}", model.eval())
        (run / f"checkpoint_{step // 100:06d}" / "state.json").write_text(json.dumps({"step": step}))
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "serve.py"), str(run), "--port", str(free_port()),
                           "--num-cpus", "2", "--smoke-test"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"convnet: {run / 'checkpoint_000002'}" in done.stdout, done.stdout
    assert "'status': 'ok'" in done.stdout and "'architectures': ['convnet']" in done.stdout, done.stdout
