"""Benchmark of the meta-training input pipeline (issue 2): does training wait for sub-datasets?

    python bench/bench_train.py                 # Ray: the stream alone, then training with 1 and 2 workers
    python bench/bench_train.py --no-ray        # no Ray (e.g. a GPU box): producer, compute, DataLoader pipeline
    python bench/bench_train.py --no-ray --model '{"arch": "resnet18", "target_kwargs": {}, "image_size": 64}'

Ray mode times what jobs/train.py runs (the embedded default config): sub-datasets/s that the Ray Data
stream produces alone (iterated by the driver), then real TorchTrainer runs with 1 and 2 workers: their
tasks/s and the share of step time spent waiting for data (metrics.jsonl, first report left out, as
it holds start-up). ``--no-ray`` times the same pieces in one process: SubDatasetBuilder's rate, the
rate of train_step on the device alone (bf16 autocast on CUDA), and a torch DataLoader whose worker
processes run SubDatasetBuilder for train_step, with its data-wait share. Appends Markdown to ``--out``.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # a checkout that is not pip-installed
from pudnet import PudNet, PudNetConfig                         # noqa: E402
from pudnet.overrides import from_dict                                 # noqa: E402
from pudnet.data.sources import BASE_SOURCES, SourceUnavailable, load_class_bank  # noqa: E402
from pudnet.model.meta import Episode, train_step                     # noqa: E402
from pudnet.data.shards import Catalog, write_bank                   # noqa: E402
from pudnet.data.stream import SubDatasetBuilder, subdatasets, trainable_classes  # noqa: E402

TITLE = ("# Meta-training input pipeline: bench/bench_train.py\n\nSub-datasets (5-way, 10 support + 10 query "
         "images each) per second, made by the stream vs consumed by training, and the share of step time a "
         "training worker waits for data (goal on a GPU: < 5%). Timings on a shared machine are noisy: see the "
         "load average.\n\n")
EMBEDDED = BASE_SOURCES


class TaskStream(torch.utils.data.IterableDataset):
    """Batches of ``per_step`` sub-datasets, task ids split over the DataLoader's worker processes."""

    def __init__(self, builder_args: dict, per_step: int, steps: int):
        self.builder_args, self.per_step, self.steps = builder_args, per_step, steps

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        builder = SubDatasetBuilder(**self.builder_args)
        for step in range(worker, self.steps, workers):
            yield builder({"id": np.arange(step * self.per_step, (step + 1) * self.per_step)})


def as_is(batch: dict) -> dict:
    """Keep the numpy batch (the default collate would turn it into tensors)."""
    return batch


def no_ray(args) -> list[str]:
    """Producer rate, consumer rate and a DataLoader pipeline, without Ray."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = from_dict(PudNetConfig, json.loads(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        roots = []
        for source in args.sources.split(","):
            try:
                bank, _ = load_class_bank([source], cfg.image_size, 1000)
            except SourceUnavailable as e:
                print(f"bench: {source} absent: {e}")
                continue
            roots.append(str(Path(tmp, source)))
            write_bank(bank, roots[-1], source, {"kind": "bench"})
        catalog = Catalog(roots)
        classes, _ = trainable_classes(catalog, catalog.class_names, args.shots + args.queries)
        builder_args = dict(roots=roots, classes=classes, ways=args.ways, shots=args.shots, queries=args.queries,
                            seed=0)
        builder = SubDatasetBuilder(**builder_args)
        ids = iter(range(10**9))
        produce = rate(lambda: builder({"id": np.array([next(ids)])}), 50 * args.tasks_per_step, 10)

        torch.manual_seed(0)
        model = PudNet(cfg).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")  # noqa: E731
        first = builder({"id": np.arange(args.tasks_per_step)})
        fixed = [Episode.from_subdataset(s, model) for s in subdatasets(first)]

        def step(episodes):
            with autocast():
                train_step(model, optimizer, episodes)
            if device.type == "cuda":
                torch.cuda.synchronize()
        compute = rate(lambda: step(fixed), args.steps, 3) * args.tasks_per_step

        loader = torch.utils.data.DataLoader(TaskStream(builder_args, args.tasks_per_step, args.steps + 5),
                                             batch_size=None, num_workers=args.loader_workers, prefetch_factor=4,
                                             collate_fn=as_is)
        wait = work = 0.0
        batches = iter(loader)
        for i in range(args.steps + 5):
            tick = time.perf_counter()
            batch = next(batches)
            tock = time.perf_counter()
            step([Episode.from_subdataset(s, model) for s in subdatasets(batch)])
            if i >= 5:   # the first batches pay for starting the worker processes
                wait, work = wait + tock - tick, work + time.perf_counter() - tock
    memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} torch threads"
    return [f"- device: {device} ({where}){memory}; model {cfg.arch} {cfg.image_size}px; {args.ways}-way "
            f"{args.shots}+{args.queries}, {args.tasks_per_step} tasks/step; {len(roots)} sources",
            f"- producer alone (SubDatasetBuilder, 1 process): **{produce:.1f} sub-datasets/s**",
            f"- train_step alone on {device.type} (data ready): **{compute:.1f} sub-datasets/s**",
            f"- pipeline (torch DataLoader, {args.loader_workers} producer process(es) -> train_step): "
            f"**{args.steps * args.tasks_per_step / (wait + work):.1f} sub-datasets/s**, "
            f"waiting for data **{100 * wait / (wait + work):.1f}%** of step time",
            f"- one producer process makes {produce / compute:.1f}x what this device consumes: "
            f"{math.ceil(compute / produce)} process(es) keep it fed"]


def rate(fn, count: int, warmup: int) -> float:
    """Calls per second of ``fn`` over ``count`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def with_ray(args) -> list[str]:
    """The Ray Data stream alone, then jobs/train.py itself with 1 and 2 workers."""
    import ray

    from jobs.progress import METRICS_FILE
    from jobs.stream import make_stream
    from jobs.train import load_config, main, training_data

    ray.init(include_dashboard=False, log_to_driver=False)
    cfg = load_config(overrides=args.overrides)
    cfg, roots, _, classes = training_data(cfg)
    per_step = cfg.tasks_per_step * cfg.num_workers
    lines = [f"- Ray {ray.__version__}, {ray.cluster_resources().get('CPU')} CPUs; model {cfg.model.arch} "
             f"{cfg.model.image_size}px; {cfg.ways}-way {cfg.shots}+{cfg.queries}, {cfg.tasks_per_step} tasks per "
             f"worker-step; stream_actors={cfg.stream_actors} x {cfg.stream_cpus} CPU"]
    stream_cfg = dataclasses.replace(cfg, steps=args.steps * 4)
    with tempfile.TemporaryDirectory() as tmp:
        stream = make_stream(stream_cfg, roots, classes, str(Path(tmp, "no-run")))
        batches, count = iter(stream.iter_batches(batch_size=per_step, batch_format="numpy")), 0
        for _ in range(5):   # actor start-up and first reads
            next(batches)
        start = time.perf_counter()
        for batch in batches:
            count += len(batch["task"])
        lines.append(f"- stream alone (driver iterating, no training): **{count / (time.perf_counter() - start):.1f} "
                     f"sub-datasets/s**")
        for workers in (1, 2):
            name = f"bench-{workers}w"
            main([f"num_workers={workers}", f"steps={args.steps}", f"log_every={args.steps // 4}", "eval_tasks=0",
                  "val_tasks=0", f"checkpoint_every={args.steps}", f"storage_path={tmp}", f"name={name}",
                  *args.overrides])
            reports = [json.loads(line) for line in Path(tmp, name, METRICS_FILE).read_text().splitlines()
                       if '"tasks_per_s"' in line][1:]
            tasks = np.mean([r["tasks_per_s"] for r in reports])
            wait = np.mean([r["data_wait_fraction"] for r in reports])
            lines.append(f"- training, {workers} worker{'s' * (workers > 1)} x {cfg.cpus_per_worker} CPU: "
                         f"**{tasks:.1f} sub-datasets/s** consumed, waiting for data **{100 * wait:.1f}%** of step "
                         f"time ({np.mean([r['loss'] for r in reports]):.3f} mean loss)")
    ray.shutdown()
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-ray", action="store_true", help="time pudnet alone, with a torch DataLoader")
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps per measurement")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--model", default="{}", help="--no-ray: PudNetConfig fields as JSON")
    parser.add_argument("--sources", default=",".join(EMBEDDED), help="--no-ray: embedded sources")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--tasks-per-step", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=0, help="--no-ray: torch CPU threads (0: torch's default; "
                        "Ray gives each train worker 1 on a small machine)")
    parser.add_argument("overrides", nargs="*", help="Ray mode: TrainConfig key=value overrides")
    args = parser.parse_args(argv)
    start = time.time()
    lines = no_ray(args) if args.no_ray else with_ray(args)
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    header = (f"### `python bench/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
              f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores{load}, torch {torch.__version__}, "
              f"{time.time() - start:.0f} s\n")
    text = header + "\n" + "\n".join(lines) + "\n"
    print(text)
    fresh = not os.path.exists(args.out)
    with open(args.out, "a") as f:
        f.write((TITLE if fresh else "") + text + "\n")


if __name__ == "__main__":
    main()
