"""Prediction cost per image against one Adam training step per image on the same target (issues 9 and 12).

    python bench/cost.py --out bench/results_cost.md                      # CPU grid, a few minutes on 2 cores
    python bench/cost.py --grid gpu --out gpu_check.md --json gpu_check.json   # what bench/gpu_check.sh runs
    python bench/cost.py --grid gpu --tiny                                # tiny sizes: the test suite's check
    python bench/cost.py --grid whole --meta-size 0 --set refine_steps=10 refine_layers=1   # a PudNetConfig variant

Imports torch, torchvision, numpy and safetensors only (no Ray), so it runs on a bare GPU machine. Timed
on the first accelerator if there is one, else the CPU; an untrained PudNet with the ridge head (the
cost does not depend on training). "predict" is ``pudnet.model.predict.predict`` on K classes x S images
(no self-check hold-out) under the default memory ceiling: the encoder reads at most
``sketch_per_class`` images per class, BatchNorm statistics at most ``stats_images``, the head all N.
"Adam step" is one ``torch.optim.Adam`` step of the same target (torchvision module) on a batch of
``--batch`` images; its per-image cost is step time / batch. "meta step" is one PudNet meta-training
step (``pudnet.model.meta.train_step``, K=10, S=Q=10) under bf16 autocast on an accelerator, fp32 on the CPU.
Each figure is the median of ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from pudnet import PudNet, PudNetConfig
from pudnet.data.tasks import normalize
from pudnet.model.meta import Episode, train_step
from pudnet.model.predict import predict
from pudnet.model.targets import build
from pudnet.overrides import apply_overrides

GRIDS = {  # (arch, image size, K, S) of the prediction rows
    "cpu": [("convnet", 32, 10, 10), ("convnet", 32, 10, 100), ("convnet", 32, 100, 10), ("convnet", 32, 1000, 1),
            ("resnet18", 32, 10, 10), ("resnet18", 32, 10, 100), ("resnet18", 32, 100, 10), ("resnet18", 32, 1000, 1),
            ("convnet", 112, 10, 10), ("convnet", 112, 100, 1), ("convnet", 112, 1000, 1),
            ("resnet18", 112, 10, 10), ("resnet18", 112, 100, 1), ("resnet18", 112, 1000, 1)],
    "gpu": [("resnet18", r, k, 10) for r in (112, 224) for k in (10, 100, 1000)],
    # the main job's whole-dataset table (README Results): 10 classes, S = 10, 100, all (about 600)
    "whole": [("convnet", 32, 10, 10), ("convnet", 32, 10, 100), ("convnet", 32, 10, 600)],
}
TINY = [("convnet", 16, 3, 2), ("resnet18", 16, 3, 2)]   # --tiny, either grid; its meta step uses the convnet


def device() -> torch.device:
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up, accelerator work included."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if torch.accelerator.is_available():
            torch.accelerator.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def model_for(arch: str, size: int, tiny: bool, overrides: tuple[str, ...] = ()) -> PudNet:
    small = dict(encoder_width=8, hidden=16, layer_embedding=8) if tiny else {}
    kwargs = {} if arch == "resnet18" else {"depth": 3, "width": 64, "pool": 4}
    torch.manual_seed(0)
    cfg = PudNetConfig(arch=arch, target_kwargs=kwargs, image_size=size, max_classes=1000, head="ridge", **small)
    return PudNet(apply_overrides(cfg, list(overrides))).to(device()).eval()


def predict_row(model: PudNet, k: int, s: int, repeats: int) -> dict:
    r = model.cfg.image_size
    images = np.random.default_rng(0).integers(0, 256, (k * s, r, r, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(k), s)
    names = [f"c{i}" for i in range(k)]
    seconds = timed(lambda: predict(model, images, labels, names, self_check_fraction=0), repeats)
    state = predict(model, images, labels, names, self_check_fraction=0).state_dict
    payload = len(safetensors.torch.save(state))
    return {"predict_s": seconds, "predict_ms_per_image": 1e3 * seconds / (k * s), "response_mb": payload / 2**20}


def adam_row(arch: str, size: int, k: int, batch: int, repeats: int, target_kwargs: dict) -> dict:
    torch.manual_seed(0)
    net = build(arch, k, **target_kwargs).to(device()).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    x = normalize(pixels.to(device()), (0.5,) * 3, (0.5,) * 3)   # the layout every evaluated method trains on
    y = torch.randint(0, k, (batch,), device=device())

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    seconds = timed(step, repeats)
    return {"adam_step_s": seconds, "adam_ms_per_image": 1e3 * seconds / batch}


def meta_step_row(size: int, tiny: bool, repeats: int) -> dict:
    """One meta-training step of a ResNet-18 PudNet (K=10, S=Q=10; a convnet, K=3, S=Q=2 with --tiny)."""
    arch = "convnet" if tiny else "resnet18"
    model = model_for(arch, size, tiny).train()
    k, s = (3, 2) if tiny else (10, 10)
    g = torch.Generator().manual_seed(0)
    episode = Episode(*(t.to(device()) for t in (torch.randn(k * s, 3, size, size, generator=g),
                                                torch.arange(k).repeat_interleave(s),
                                                torch.randn(k * s, 3, size, size, generator=g),
                                                torch.arange(k).repeat_interleave(s))), k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bf16 = device().type != "cpu"
    autocast = torch.autocast(device().type, torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with autocast:
            train_step(model, optimizer, [episode])
    return {"meta_step_s": timed(step, repeats), "meta_step_dtype": "bf16 autocast" if bf16 else "fp32",
            "meta_step_task": f"{arch}, K={k} S={s} Q={s} at {size} px"}


def run(grid: str, tiny: bool, batch: int, repeats: int, meta_size: int, overrides: tuple[str, ...] = ()) -> dict:
    rows, adam = [], {}
    for arch, size, k, s in TINY if tiny else GRIDS[grid]:
        model = model_for(arch, size, tiny, overrides)
        row = {"arch": arch, "px": size, "K": k, "S": s, "N": k * s, **predict_row(model, k, s, repeats)}
        key = (arch, size, k)
        if key not in adam:
            adam[key] = adam_row(arch, size, k, batch, repeats, model.cfg.target_kwargs)
        row.update(adam[key])
        row["ratio"] = row["predict_ms_per_image"] / row["adam_ms_per_image"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = meta_step_row(16 if tiny else meta_size, tiny, repeats) if meta_size else None
    return {"device": str(device()), "name": torch.cuda.get_device_name() if torch.cuda.is_available()
            else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "grid": grid, "tiny": tiny, "batch": batch, "repeats": repeats,
            "rows": rows, "meta_step": meta, "overrides": list(overrides)}


def markdown(result: dict, command: str) -> str:
    lines = [f"`{command}`", "",
             f"Device: {result['device']} ({result['name']}, {result['threads']} threads), torch {result['torch']}; "
             f"median of {result['repeats']} runs; Adam batch {result['batch']}. Untrained PudNet, ridge head, "
             "random pixels (cost does not depend on either); PudNetConfig overrides: "
             f"{' '.join(result['overrides']) or 'none'}.", "",
             "1-minute load average {before:.1f} before the run and {after:.1f} after it, on {cpus} CPUs "
             "(other jobs share the machine: absolute times scale with it).".format(**result["load_average"]), "",
             "| target | px | K | S | N | predict s | predict ms/image | Adam step ms/image | ratio | response MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['arch']} | {r['px']} | {r['K']} | {r['S']} | {r['N']} | {r['predict_s']:.3f} | "
                     f"{r['predict_ms_per_image']:.3f} | {r['adam_ms_per_image']:.3f} | {r['ratio']:.2f} | "
                     f"{r['response_mb']:.1f} |")
    m = result["meta_step"]
    if m:
        lines += ["", f"Meta-training step ({m['meta_step_task']}, {m['meta_step_dtype']}): {m['meta_step_s']:.3f} s."]
    lines += ["", "ratio = prediction ms per image / one Adam step's ms per image (below 1: predicting the "
              "weights costs less per image than a single training step)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--meta-size", type=int, default=112, help="image size of the meta-training step (0: skip it)")
    parser.add_argument("--set", nargs="*", default=[], help="PudNetConfig key=value for the predicting model")
    parser.add_argument("--out", help="Markdown file")
    parser.add_argument("--json", help="JSON file")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    result = run(args.grid, args.tiny, min(args.batch, 8) if args.tiny else args.batch, args.repeats, args.meta_size,
                 tuple(args.set))
    result["load_average"] = {"before": load, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    text = markdown(result, " ".join(["python bench/cost.py", *(sys.argv[1:] if argv is None else argv)]))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Prediction cost against training cost\n\n" + text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
