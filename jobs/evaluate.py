"""Benchmark a PudNet checkpoint against no-learning baselines and SGD on unseen sub-datasets.

    python jobs/evaluate.py checkpoint=runs/<run>/checkpoint_... --json r.json --markdown r.md --plot r.png
    python jobs/evaluate.py --smoke-test            # a tiny untrained model, 3 tasks: checks the pipeline

Two settings, from the class split stored in the checkpoint: ``intra`` (held-out classes of the
meta-training sources) and ``inter`` (each task from one left-out source). Images come from the
training run's shards (``jobs/prepare_data.py``): support and query from a class's train split,
test images from its test split. Every method sees the same support images and is scored on the
same test images; see ``pudnet.evaluate``.
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

from jobs.prepare_data import default_data_dir, prepare_sources
from pudnet import PudNet, PudNetConfig, checkpoint
from pudnet.config import apply_overrides
from pudnet.data import SubDatasetSampler, split_classes
from pudnet.evaluate import ALL_METHODS, Evaluator, SGDSettings, evaluate_tasks, markdown_table
from pudnet.shards import Catalog, read_class_bank


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = ""            # checkpoint dir or model.safetensors; empty only with --smoke-test
    tasks: int = 50                 # sub-datasets per setting (N)
    ways: int = 5                   # K
    shots: int = 10                 # S support images per class
    queries: int = 10               # Q validation images per class (SGD's early stopping)
    test: int = 10                  # T test images per class, never used to learn or stop
    data_dir: str = ""              # shards; "" = the training run's (stored in the checkpoint), else the default
    max_per_class: int = 1000       # images read per class and split
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
SMOKE_SOURCES = ("digits", "mnist")


def shard_roots(cfg: EvalConfig, train_config: dict, sources: list[str], image_size: int) -> list[str]:
    """The shard directories training read (prepared now if absent), found from the run's own settings."""
    data_dir = cfg.data_dir or train_config.get("data_dir") or default_data_dir()
    return prepare_sources(sources, data_dir, image_size, train_config.get("max_per_class", 1000),
                           train_config.get("test_fraction", 0.2))


def load(cfg: EvalConfig, smoke: bool):
    """The model, its class split and the run's settings: from the checkpoint, or tiny ones for --smoke-test."""
    device = torch.device(cfg.device) if cfg.device else (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu"))
    if cfg.checkpoint:
        loaded = checkpoint.load(cfg.checkpoint, device)
        if loaded.split is None:
            raise ValueError(f"{cfg.checkpoint} has no class split: evaluation cannot tell unseen classes")
        return loaded.model, loaded.split, json.loads(loaded.metadata.get("train_config", "{}")), device
    if not smoke:
        raise ValueError("checkpoint=PATH is required (a checkpoint directory written by jobs/train.py)")
    torch.manual_seed(cfg.seed)
    model = PudNet(PudNetConfig(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16))
    train_config = {"max_per_class": cfg.max_per_class}
    names = Catalog(shard_roots(cfg, train_config, list(SMOKE_SOURCES), model.cfg.image_size)).class_names
    return model.to(device), split_classes(names, ["digits"], 0.2, 5, cfg.seed), train_config, device


def run(cfg: EvalConfig, smoke: bool = False) -> dict:
    model, split, train_config, device = load(cfg, smoke)
    sources = sorted({c.split("/", 1)[0] for c in split.meta_train + split.intra_test + split.inter_test})
    roots = shard_roots(cfg, train_config, sources, model.cfg.image_size)
    catalog_names = set(Catalog(roots).class_names)
    evaluator = Evaluator(model, cfg.sgd, cfg.seed)
    report = {"config": dataclasses.asdict(cfg), "device": str(device), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "settings": {}}
    for setting, names, within_source in (("intra", split.intra_test, False), ("inter", split.inter_test, True)):
        present = [c for c in names if c in catalog_names]
        if len(present) < cfg.ways:
            print(f"{setting}: {len(present)} of its classes available, fewer than K={cfg.ways}: skipped")
            continue
        train, test = (read_class_bank(roots, present, part, cfg.max_per_class) for part in ("train", "test"))
        sampler = SubDatasetSampler(train, present, cfg.seed, within_source=within_source, test_bank=test)
        tasks = (sampler.sample(i, cfg.ways, cfg.shots, cfg.queries, cfg.test) for i in range(cfg.tasks))
        result = evaluate_tasks(evaluator, tasks, cfg.methods,
                                progress=lambda it: tqdm(it, total=cfg.tasks, desc=setting, file=sys.stdout))
        report["settings"][setting] = result
        what = "held-out classes" if setting == "intra" else "left-out sources"
        sources = ", ".join(sorted({c.split("/")[0] for c in present}))
        print(markdown_table(f"{setting}-dataset: {what} of {sources}", result), flush=True)
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
