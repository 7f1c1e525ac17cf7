"""bench/data_scale.py at the test's size: the data path (ILSVRC layout -> prepare -> stream) runs at two class
counts, each on its own cluster, and writes its table. The figures themselves are the benchmark's, not asserted."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_the_data_scale_benchmark_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "scale.md"
    run = subprocess.run([sys.executable, "bench/data_scale.py", "--classes", "10,20", "--per-class", "30", "--tasks",
                          "6", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| 10 ") or
            line.startswith("| 20 ")]
    assert [r[0].strip() for r in rows] == ["10", "20"] and [r[1].strip() for r in rows] == ["300", "600"]
    for row in rows:
        prepare, stream, driver = (float(v) for v in row[2:5])
        assert prepare > 0 and stream > 0 and driver > 0
