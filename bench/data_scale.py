"""The data path at scale (issue 12): a generated ILSVRC-layout folder through `jobs/prepare_data.py ilsvrc`'s
Ray Data job, then through the training stream, at several class counts; memory must stay flat as data grows.

    python bench/data_scale.py                                   # 100 and 1,000 classes x 60 JPEGs (a few minutes)
    python bench/data_scale.py --classes 10,20 --per-class 30 --tasks 10 --out /tmp/t.md   # the test's size

Each class count runs in its own process on its own local Ray cluster (2 CPUs, 256 MB object store), so that
peak memory (the kernel's VmHWM of every process) belongs to that size alone. Reports images/s per CPU for
preparing, sub-datasets/s for the stream alone (5-way, 10 support + 10 query; the first one, which waits for
the actor to start, left out), and the peak resident memory of the driver and of each kind of Ray worker process
of that cluster. Appends Markdown to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # a checkout that is not pip-installed

CPUS = 2


def write_ilsvrc(root: Path, classes: int, per_class: int, seed: int = 0) -> int:
    """``train/<wnid>/*.JPEG`` (4/5 of each class) and ``val/<wnid>/*.JPEG`` (the rest): 64 px noise + a block."""
    rng = np.random.default_rng(seed)
    n_val = max(1, per_class // 5)
    for c in range(classes):
        wnid = f"n{c:08d}"
        for split, count in (("train", per_class - n_val), ("val", n_val)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
                image[8 + c % 32:40 + c % 32, 8:40] = rng.integers(100, 255, 3, dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{wnid}_{i}.JPEG", quality=85)
    return classes * per_class


def peak_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of a process, MB; 0 if it is gone."""
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (a local cluster's GCS, raylet and workers are children of its driver)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) if proc.name.isdigit() else None
        except (OSError, IndexError, ValueError):
            continue
        if ppid is not None:
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def ray_workers() -> dict[str, float]:
    """{kind of this cluster's Ray worker process (``ray::<Name>``): its largest peak resident memory, MB}."""
    peaks = {}
    for pid in descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::"):
            kind = cmd.split("(")[0].split()[0].split(".")[0]   # ray::Actor.method -> ray::Actor
            peaks[kind] = max(peaks.get(kind, 0.0), peak_mb(pid))
    return peaks


def measure(classes: int, per_class: int, tasks: int, image_size: int) -> dict:
    """One size, in this process: generate, prepare, stream; the numbers of the table's row."""
    import ray

    from jobs.stream import make_stream
    from jobs.sharding import list_ilsvrc, prepare_listing
    from jobs.train import TrainConfig
    from pudnet.data.shards import Catalog
    from pudnet.data.stream import subdatasets

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        images = write_ilsvrc(Path(tmp, "ILSVRC"), classes, per_class)
        generate_s = time.perf_counter() - start
        ray.init(address="local", num_cpus=CPUS, object_store_memory=256 << 20, include_dashboard=False,
                 log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            listing = list_ilsvrc(str(Path(tmp, "ILSVRC")), None, None)
            start = time.perf_counter()
            out = str(Path(tmp, "shards"))
            prepare_listing(listing, out, "imagenet", image_size, {"kind": "bench"})
            prepare_s = time.perf_counter() - start
            names = list(Catalog(out).class_names)
            cfg = TrainConfig(tasks_per_step=1, num_workers=1, steps=tasks, stream_actors=1, stream_cpus=1, ways=5,
                              shots=10, queries=10, seed=0, window_rows=0, stream_cache_mb=256, augment_p_class=0.0,
                              augment_shift=0)
            stream = make_stream(cfg, [out], names, str(Path(tmp, "no-run")))
            made, start = 0, None
            for batch in stream.iter_batches(batch_size=1, batch_format="numpy"):
                if start is None:                     # from the first sub-dataset on: actor start-up left out
                    start = time.perf_counter()
                else:
                    made += len(list(subdatasets(batch)))
            stream_s = time.perf_counter() - start
            workers = ray_workers()
        finally:
            ray.shutdown()
    return {"classes": classes, "images": images, "generate_s": generate_s, "prepare_s": prepare_s,
            "prepare_images_per_s_per_cpu": images / prepare_s / CPUS, "subdatasets": made,
            "stream_subdatasets_per_s": made / stream_s, "driver_peak_mb": peak_mb(),
            "driver_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "workers_peak_mb": workers}


def table(rows: list[dict], command: str) -> str:
    kinds = sorted({k for r in rows for k in r["workers_peak_mb"]})
    head = ["classes", "JPEGs", "prepare img/s per CPU", "stream sub-datasets/s", "driver peak MB",
            *[f"{k} peak MB" for k in kinds]]
    lines = [f"### `{command}`", "", f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores, load average "
             f"{os.getloadavg()[0]:.1f}; Ray local cluster {CPUS} CPUs, 256 MB object store", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([str(r["classes"]), str(r["images"]), f"{r['prepare_images_per_s_per_cpu']:.0f}",
                                        f"{r['stream_subdatasets_per_s']:.1f}", f"{r['driver_peak_mb']:.0f}",
                                        *[f"{r['workers_peak_mb'].get(k, 0):.0f}" for k in kinds]]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="100,1000", help="comma-separated class counts")
    parser.add_argument("--per-class", type=int, default=60, help="JPEGs per class (a fifth kept as val/)")
    parser.add_argument("--tasks", type=int, default=200, help="sub-datasets drawn from the stream")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)   # internal: measure one size, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.per_class, args.tasks, args.image_size)), flush=True)
        return []
    rows = []
    for classes in map(int, args.classes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(classes), "--per-class", str(args.per_class),
                              "--tasks", str(args.tasks), "--image-size", str(args.image_size)],
                             capture_output=True, text=True)
        found = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not found:
            raise RuntimeError(f"{classes} classes failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        rows.append(json.loads(found[-1][len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    command = " ".join(["python bench/data_scale.py", *(sys.argv[1:] if argv is None else argv)])
    text = table(rows, command)
    print(text)
    with open(args.out, "a") as f:
        f.write(("" if args.out.exists() and args.out.stat().st_size else
                 "# Data path at scale: bench/data_scale.py\n\nSee the script's docstring for what is measured.\n\n")
                + text + "\n")
    return rows


if __name__ == "__main__":
    main()
