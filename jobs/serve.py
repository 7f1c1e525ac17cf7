"""Serve finished training runs over HTTP, no config editing: each run's newest checkpoint, its architecture
read from the checkpoint itself.

    python jobs/train.py && python jobs/serve.py runs/pudnet-embedded
    python jobs/serve.py runs/pudnet-embedded runs/pudnet-resnet18 --port 8000 --allowed-root ~/datasets
    pudnet predict --endpoint http://127.0.0.1:8000 --data pets/ --out weights.safetensors

A run directory is ``<storage_path>/<name>`` as Ray Train writes it (``checkpoint_*`` folders, the newest by
step is served); a checkpoint directory or ``model.safetensors`` file works too. Serves on 127.0.0.1 unless
``--host`` says otherwise, on a private local Ray cluster, until Ctrl-C. The other limits are those of
serve_app/config.yaml (serve_app.schemas.ServeArgs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python jobs/serve.py` from anywhere

from serve_app.checkpoints import CheckpointError, architecture_of, newest_checkpoint  # noqa: E402
from serve_app.schemas import ServeArgs  # noqa: E402


def checkpoints_of(runs: list[str]) -> dict[str, str]:
    """architecture -> newest checkpoint path of each run; ValueError if two runs generate the same one."""
    chosen: dict[str, str] = {}
    for run in runs:
        path = str(newest_checkpoint(Path(run).expanduser().absolute()))
        arch = architecture_of(path)
        if arch in chosen:
            raise ValueError(f"{run} and {chosen[arch]} both generate {arch!r} weights; serve one of them")
        chosen[arch] = path
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (or checkpoint directories/files) to serve")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes the endpoint to other machines")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allowed-root", action="append", default=[],
                   help="a directory JSON {\"path\"} requests may read (repeatable; default: none)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--smoke-test", action="store_true", help="start, answer /healthz once, stop")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checkpoints = checkpoints_of(args.runs)
    except (CheckpointError, ValueError) as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    import ray  # after the checks: a wrong path fails in a second, not after a cluster start
    import requests
    from ray import serve

    from serve_app import local
    roots = [str(Path(r).expanduser().absolute()) for r in args.allowed_root]
    config = local.read_config(checkpoints=checkpoints, allowed_roots=roots)  # its deployments: autoscaling
    ServeArgs.model_validate(config["applications"][0]["args"])
    config["http_options"] = {"host": args.host, "port": args.port}
    # the replicas import serve_app from this checkout: the local cluster's processes inherit the variable
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        local.deploy(config)
        url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
        for arch, path in checkpoints.items():
            print(f"[serve] {arch}: {path}")
        print(f"[serve] ready: {url}/healthz -> {requests.get(url + '/healthz', timeout=30).json()}")
        print(f"[serve] pudnet predict --endpoint {url} --data DIR --out weights.safetensors   (Ctrl-C stops)")
        while not args.smoke_test:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
