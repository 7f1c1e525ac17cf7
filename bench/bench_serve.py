"""Bounded load test of PudNet serving: p50/p99 latency and predictions/s at 1, 4 and 16 concurrent clients.

    python bench/bench_serve.py --out bench/results_serve_cpu.md          # HTTP to Serve on a private loopback cluster
    python bench/bench_serve.py --no-serve --out bench/results_gpu.md     # pudnet.model.predict.predict only; no Ray needed
    python bench/bench_serve.py --levels 1 --requests 12 --dtype bfloat16   # a lean response: bytes and p50

Each level sends ``--requests`` requests or stops after ``--duration`` s, whichever comes first. A request is
one dataset of ``--classes`` x ``--images``/``--classes`` images (default 10 x 50, issue 3's goal) for a
ResNet-18 target, sent as ``.npz``. Without ``--checkpoint`` the hypernetwork is untrained: timing does not
depend on its weights. Serve mode deploys serve_app/config.yaml with its autoscaling as shipped and samples
the replica count every 0.5 s, so the report shows replicas going 1 -> 2 under load and back after it.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch

from pudnet import PudNet, PudNetConfig

from pudnet.model import checkpoint
from pudnet.model.predict import predict


def run_level(call, clients: int, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads call ``call(session)`` until ``max_requests`` were issued or time is up."""
    issued, latencies, failures, lock = itertools.count(), [], [], threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def client():
        with requests.Session() as session:
            while time.perf_counter() < deadline and next(issued) < max_requests:
                start = time.perf_counter()
                failure = call(session)
                with lock:
                    (failures.append(failure) if failure else latencies.append(time.perf_counter() - start))
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "ok": len(latencies), "failed": len(failures), "wall_s": wall,
            "per_s": len(latencies) / wall, "p50_ms": np.percentile(ms, 50), "p99_ms": np.percentile(ms, 99),
            "failures": sorted(set(failures))[:3]}


def dataset(classes: int, images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.arange(images) % classes
    return rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8), labels, [f"c{c}" for c in range(classes)]


def server_seconds(head: bytes) -> tuple[float, float, float]:
    """Decode, predict and generation seconds from a safetensors response's metadata (its header comes first)."""
    size = int.from_bytes(head[:8], "little")
    meta = json.loads(head[8:8 + size])["__metadata__"]
    decode, server = float(meta["decode_seconds"]), float(meta["server_seconds"])
    return decode, server - decode, float(meta["generate_seconds"])


def replica_sampler(app: str, deployment: str, origin: float, timeline: list,
                    stop: threading.Event) -> threading.Thread:
    """Append ``(seconds since origin, running replicas)`` whenever the count changes."""
    from serve_app import local

    def sample():
        while not stop.is_set():
            count = local.running_replicas(app, deployment)
            if not timeline or timeline[-1][1] != count:
                timeline.append((time.perf_counter() - origin, count))
            stop.wait(0.5)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return thread


def bench_serve(args, ckpt: Path, body: bytes) -> tuple[list[dict], list[str]]:
    """Levels over HTTP, then wait (bounded) for the autoscaler to return to min_replicas."""
    from serve_app import local
    config = local.read_config(checkpoints={args.arch: str(ckpt)})
    app, deployment = config["applications"][0]["name"], config["applications"][0]["deployments"][0]["name"]
    autoscaling = config["applications"][0]["deployments"][0]["autoscaling_config"]
    if args.replicas:  # pinned: throughput per replica count, without the autoscaler's delay in the figures
        autoscaling.update(min_replicas=args.replicas, max_replicas=args.replicas)
    url = local.start()
    try:
        local.deploy(config)
        deadline = time.perf_counter() + 120
        while local.running_replicas(app, deployment) < autoscaling["min_replicas"]:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{autoscaling['min_replicas']} replicas did not start within 120 s")
            time.sleep(0.5)
        timeline, stop, marks, results, t0 = [], threading.Event(), [], [], time.perf_counter()
        replica_sampler(app, deployment, t0, timeline, stop)

        sizes, server_times = [], []

        def call(session):
            with session.post(url + "/v1/predict", data=body, params={"arch": args.arch, "dtype": args.dtype},
                              headers={"Content-Type": "application/x-npz"}, timeout=300, stream=True) as response:
                if response.status_code != 200:
                    return f"{response.status_code} {response.text[:120]}"
                size, head = 0, b""
                for chunk in response.iter_content(1 << 20):  # as a client writing it to disk reads it
                    head += chunk[:max(0, (1 << 20) - len(head))]
                    size += len(chunk)
            sizes.append(size)
            server_times.append(server_seconds(head))
            return None
        with requests.Session() as session:
            failure = call(session)  # warm-up, and fail fast on a broken deployment
        if failure:
            raise RuntimeError(f"warm-up request failed: {failure}")
        for clients in args.levels:
            marks.append((time.perf_counter() - t0, f"{clients} clients start"))
            results.append(run_level(call, clients, args.requests, args.duration))
        marks.append((time.perf_counter() - t0, "load ends"))
        minimum = autoscaling["min_replicas"]
        deadline = time.perf_counter() + args.settle
        while time.perf_counter() < deadline and local.running_replicas(app, deployment) != minimum:
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        events = sorted(marks + [(t, f"{n} replica(s) running") for t, n in timeline])
        times = np.array(server_times[1:]) * 1000  # the warm-up request aside
        return results, [f"response: safetensors, dtype={args.dtype}, {max(sizes)} bytes",
                         "inside the replica, median over the timed requests (response metadata): decoding the upload "
                         f"{np.median(times[:, 0]):.0f} ms, predict() {np.median(times[:, 1]):.0f} ms "
                         f"(of which the generation pass {np.median(times[:, 2]):.0f} ms); the rest of the p50 is "
                         "HTTP, Serve's hops and serialisation",
                         *[f"{t:.1f} s: {text}" for t, text in events]]
    finally:
        local.stop()


def bench_direct(args, ckpt: Path, images, labels, names) -> tuple[list[dict], list[str]]:
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    model = checkpoint.load(ckpt, device).model

    def call(_session) -> None:
        predict(model, images, labels, names)
    for _ in range(3):  # warm-up: kernel selection and allocator growth
        call(None)
    results = [run_level(call, clients, args.requests, args.duration) for clients in args.levels]
    return results, [f"device: {device or 'cpu'}, {torch.get_num_threads()} torch threads"]


def report(args, results: list[dict], notes: list[str]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"# PudNet {'serving (HTTP, Ray Serve)' if not args.no_serve else 'predict() without Serve'}: "
             f"{args.arch}, {args.classes} classes, {args.images} images per request", "",
             f"`python bench/bench_serve.py {' '.join(sys.argv[1:])}` at commit {commit}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs", "",
             "| clients | ok | failed | wall s | predictions/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['ok']} | {r['failed']} | {r['wall_s']:.1f} | {r['per_s']:.2f} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} |" for r in results]
    lines += ["", *[f"- {note}" for note in notes]]
    lines += [f"- failures at {r['clients']} clients: {r['failures']}" for r in results if r["failed"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-serve", action="store_true", help="time pudnet.model.predict.predict in-process")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--checkpoint", type=Path, help="PudNet checkpoint (default: untrained, same cost)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=24, help="per level")
    parser.add_argument("--duration", type=float, default=120, help="seconds per level at most")
    parser.add_argument("--replicas", type=int, help="pin the replica count (default: serve_app/config.yaml's "
                        "autoscaling, 1 to 2)")
    parser.add_argument("--settle", type=float, default=90, help="seconds to wait for scale-down at most")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="weights dtype of the response (serve mode)")
    parser.add_argument("--out", type=Path, help="Markdown file for the results")
    args = parser.parse_args(argv)
    load = f"1-minute load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or checkpoint.save(tmp, PudNet(PudNetConfig(arch=args.arch, target_kwargs={})).eval())
        size = checkpoint.load(ckpt).model.cfg.image_size
        images, labels, names = dataset(args.classes, args.images, size)
        if args.no_serve:
            results, notes = bench_direct(args, ckpt, images, labels, names)
        else:
            buffer = io.BytesIO()
            np.savez(buffer, images=images, labels=labels, class_names=np.array(names))
            results, notes = bench_serve(args, Path(ckpt), buffer.getvalue())
    after = f"1-minute load average after the run: {os.getloadavg()[0]:.1f}"
    text = report(args, results, [load, after, *notes])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
