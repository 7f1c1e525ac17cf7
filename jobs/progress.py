"""The driver's one view of a training run: progress and metrics read from the run's own ``metrics.jsonl``.

Workers' console output (Ray Data's progress bars, Ray Train's per-report lines, both ranks' prints) stays in
the Ray logs and the dashboard; the driver shows rank 0's records as they land. On a terminal that is one
tqdm bar with the latest metrics beside it; in a log (``ray job logs``, CI) one ``[pudnet]`` line per record.
"""
from __future__ import annotations

import json
import sys
import threading
from typing import TextIO

from tqdm import tqdm

from pudnet.files import filesystem

METRICS_FILE = "metrics.jsonl"   # in a run directory: one JSON record per line, written by rank 0
SHOWN = ("loss", "query_accuracy", "val_accuracy", "lr", "tasks_per_s", "images_per_s", "data_wait_fraction",
         "gpu_memory_gb", "elapsed_s")
SHORT = {"loss": "loss", "query_accuracy": "acc", "val_accuracy": "val", "tasks_per_s": "tasks/s"}


def read_records(path: str) -> list[dict]:
    """The JSON lines of ``path`` (a local path or URI); [] while it does not exist yet."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).size is None:
        return []
    with fs.open_input_stream(inner) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def line(record: dict, steps: int) -> str:
    """A record as the ``[pudnet]`` log line (``key=value`` pairs, parsed by tests and scripts)."""
    if record.get("event") == "start":
        return "[pudnet] start: " + json.dumps({k: v for k, v in record.items() if k != "event"})
    shown = [f"{k}={record[k]:.4g}" for k in SHOWN if record.get(k) is not None]
    return f"[pudnet] step={record['step']}/{steps} " + " ".join(shown)


class RunProgress:
    """Polls ``metrics_path`` in a thread while the run trains; use as a context manager around ``fit``."""

    def __init__(self, metrics_path: str, steps: int, interval_s: float = 2.0, out: TextIO = sys.stdout):
        self.path, self.steps, self.interval_s, self.out = metrics_path, steps, interval_s, out
        self.seen = len(read_records(metrics_path))      # a resumed run's earlier records were shown back then
        self.bar = tqdm(total=steps, desc="train", unit="step", file=out, dynamic_ncols=True) if out.isatty() else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-progress", daemon=True)

    def __enter__(self) -> "RunProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()                                         # the last records, written just before fit returned
        if self.bar is not None:
            self.bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        try:
            records = read_records(self.path)
        except (OSError, ValueError):                       # mid-replace on an object store: next poll
            return
        for record in records[self.seen:]:
            self.show(record)
        self.seen = max(self.seen, len(records))

    def show(self, record: dict) -> None:
        if self.bar is None:
            print(line(record, self.steps), file=self.out, flush=True)
        elif record.get("event") == "start":
            self.bar.n = record["step"]
            self.bar.refresh()
        else:
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix({SHORT.get(k, k): f"{record[k]:.3g}" for k in SHORT if record.get(k) is not None})
