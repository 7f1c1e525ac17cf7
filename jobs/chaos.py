"""Failure injection for the fault tests: ``fail_at_step`` makes one worker raise once per run."""
from __future__ import annotations

import time

from pudnet.files import filesystem, join


def inject_failure(run_dir: str, step: int) -> None:
    """Chaos test: raise once per run at ``step`` (a marker in the run dir stops the retry from raising again)."""
    fs, marker = filesystem(join(run_dir, f"injected-failure-{step}"))
    if fs.get_file_info(marker).size is None:
        fs.create_dir(marker.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(marker) as f:
            f.write(str(time.time()).encode())
        raise RuntimeError(f"injected failure at step {step} (fail_at_step): FailureConfig should restart the run")
