"""Benchmark a PudNet checkpoint against no-learning baselines and SGD on unseen sub-datasets.

    python jobs/evaluate.py checkpoint=runs/<run>/final --json results.json --markdown results.md --plot results.png
    python jobs/evaluate.py --smoke-test            # a tiny untrained model, 3 tasks: checks the pipeline

Two settings, both from the class split stored in the checkpoint: ``intra`` (held-out classes of
the meta-training sources) and ``inter`` (each task from one left-out source). Every method sees
the same support images and is scored on the same test images; see ``pudnet.evaluate``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pudnet import PudNet, PudNetConfig, checkpoint
from pudnet.config import apply_overrides
from pudnet.data import SubDatasetSampler, split_classes
from pudnet.datasets import load_class_bank
from pudnet.evaluate import ALL_METHODS, Evaluator, SGDSettings, evaluate_tasks, markdown_table


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = ""            # checkpoint dir or model.safetensors; empty only with --smoke-test
    tasks: int = 50                 # sub-datasets per setting (N)
    ways: int = 5                   # K
    shots: int = 10                 # S support images per class
    queries: int = 10               # Q validation images per class (SGD's early stopping)
    test: int = 10                  # T test images per class, never used to learn or stop
    max_per_class: int = 1000       # images per class loaded from each source
    methods: tuple[str, ...] = ALL_METHODS
    sgd: SGDSettings = SGDSettings()
    seed: int = 0                   # tasks, SGD inits and minibatch orders
    device: str = ""                # empty: the first accelerator if any, else the CPU

    def __post_init__(self):
        unknown = set(self.methods) - set(ALL_METHODS)
        if unknown:
            raise ValueError(f"methods {sorted(unknown)} unknown; choose from {ALL_METHODS}")
        for name in ("tasks", "ways", "shots", "queries", "test"):
            if getattr(self, name) < (2 if name == "ways" else 1):
                raise ValueError(f"{name}={getattr(self, name)}: too small")


SMOKE = ["tasks=3", "shots=5", "queries=5", "test=5", "max_per_class=100", "sgd.max_epochs=3"]


def load(cfg: EvalConfig, smoke: bool):
    """The model and its class split: from the checkpoint, or a tiny untrained one for --smoke-test."""
    device = torch.device(cfg.device) if cfg.device else (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu"))
    if cfg.checkpoint:
        loaded = checkpoint.load(cfg.checkpoint, device)
        if loaded.split is None:
            raise ValueError(f"{cfg.checkpoint} has no class split: evaluation cannot tell unseen classes")
        return loaded.model, loaded.split, device
    if not smoke:
        raise ValueError("checkpoint=PATH is required (a directory written by jobs/train.py)")
    torch.manual_seed(cfg.seed)
    model = PudNet(PudNetConfig(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16))
    bank, _ = load_class_bank(["digits", "mnist"], 32, cfg.max_per_class)
    return model.to(device), split_classes(bank.class_names, ["digits"], 0.2, 5, cfg.seed), device


def run(cfg: EvalConfig, smoke: bool = False) -> dict:
    model, split, device = load(cfg, smoke)
    classes = split.meta_train + split.intra_test + split.inter_test
    sources = sorted({c.split("/", 1)[0] for c in classes})
    bank, missing = load_class_bank(sources, model.cfg.image_size, cfg.max_per_class)
    for name, why in missing.items():
        print(f"source {name} unavailable, its classes are skipped: {why}")
    evaluator = Evaluator(model, cfg.sgd, cfg.seed)
    report = {"config": dataclasses.asdict(cfg), "device": str(device), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "settings": {}}
    for setting, names, within_source in (("intra", split.intra_test, False), ("inter", split.inter_test, True)):
        present = [c for c in names if c in bank.class_names]
        if len(present) < cfg.ways:
            print(f"{setting}: {len(present)} of its classes available, fewer than K={cfg.ways}: skipped")
            continue
        sampler = SubDatasetSampler(bank, present, seed=cfg.seed, within_source=within_source)
        tasks = (sampler.sample(i, cfg.ways, cfg.shots, cfg.queries, cfg.test) for i in range(cfg.tasks))
        result = evaluate_tasks(evaluator, tasks, cfg.methods,
                                progress=lambda it: tqdm(it, total=cfg.tasks, desc=setting, file=sys.stdout))
        report["settings"][setting] = result
        print(markdown_table(f"{setting} ({', '.join(sorted({c.split('/')[0] for c in present}))})", result))
    return report


def plot(report: dict, path: Path) -> None:
    """Accuracy against wall time per method, one panel per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = report["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.5), squeeze=False)
    for ax, (setting, result) in zip(axes[0], settings.items()):
        for method, r in result["methods"].items():
            ax.errorbar(r["seconds"], 100 * r["accuracy"], yerr=100 * r["ci95"], fmt="o", capsize=3, label=method)
        ax.set(xscale="log", xlabel="wall seconds per task (log)", ylabel="test accuracy (%)", title=setting)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="tiny settings; runs in well under a minute")
    parser.add_argument("--json", type=Path, help="write per-method accuracy, 95%% interval and seconds here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--plot", type=Path, help="write accuracy vs wall time (PNG) here")
    parser.add_argument("overrides", nargs="*", help="EvalConfig key=value, e.g. tasks=100 sgd.lr=3e-3")
    args = parser.parse_args(argv)
    cfg = apply_overrides(EvalConfig(), (SMOKE if args.smoke_test else []) + args.overrides)
    print(json.dumps(dataclasses.asdict(cfg), indent=1))
    report = run(cfg, args.smoke_test)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text("\n\n".join(markdown_table(s, r) for s, r in report["settings"].items()) + "\n")
    if args.plot:
        plot(report, args.plot)
    return report


if __name__ == "__main__":
    main()
