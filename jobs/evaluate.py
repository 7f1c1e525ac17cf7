"""Benchmark a PudNet run against no-learning baselines, a linear probe and Adam from scratch on unseen data.

    python jobs/evaluate.py runs/pudnet-embedded --out runs/pudnet-embedded   # newest checkpoint of a run
    python jobs/evaluate.py runs/pudnet-embedded/checkpoint_... protocols=whole whole.shots=10,100,0
    python jobs/evaluate.py --curves runs/pudnet-embedded          # training curves PNG from its metrics.jsonl
    python jobs/evaluate.py --smoke-test            # a tiny untrained model: checks the pipeline

CHECKPOINT is a checkpoint directory, its ``model.safetensors``, or a run directory (the newest
``checkpoint_*`` by step). Everything else comes from the run's record in the checkpoint: the class
split, the shard directories training read (``shard_roots``) and its TrainConfig; no Ray is needed.
Two protocols, each in two settings (``intra``: held-out classes of the meta-training sources;
``inter``: the left-out sources): ``tasks``, many small K-way sub-datasets (``pudnet.evaluation.episodes``), and
``whole``, the paper's protocol, where a dataset's classes form one task with S images per class
and the whole test split is scored (``pudnet.evaluation.whole``). Support/query images come from a class's
train split, test images from its test split.
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

from jobs.sharding import default_data_dir, prepare_sources
from jobs.progress import METRICS_FILE, read_records
from pudnet import PudNet, PudNetConfig
from pudnet.model import checkpoint
from pudnet.evaluation import plots
from pudnet.overrides import CONFIG, apply_overrides, from_dict
from pudnet.data.sources import BASE_SOURCES
from pudnet.data.tasks import ClassSplit, SubDatasetSampler, split_classes
from pudnet.evaluation.episodes import ALL_METHODS, TASK_METHODS, Evaluator, SGDSettings, evaluate_tasks, markdown_table
from pudnet.data.shards import Catalog, read_class_bank
from pudnet.files import filesystem, join
from pudnet.evaluation.whole import WHOLE_METHODS, evaluate_whole, read_whole_banks, whole_markdown

OUTPUTS = {"markdown": "eval.md", "json": "eval.json", "plot": "eval.png", "curves": "training_curves.png"}


@dataclass(frozen=True)
class WholeSettings:
    """The whole-dataset protocol: one task per left-out source, one of ``classes`` held-out classes."""

    __pydantic_config__ = CONFIG        # unknown keys raise (pudnet.overrides)

    shots: tuple[int, ...] = (10, 100, 0)   # S train images per class; 0: all of them
    classes: int = 10                       # intra setting: seeded held-out classes in the task
    val_fraction: float = 0.1               # of each class's S images: Adam's validation split (early stopping)
    max_per_class: int = 0                  # images read per class and split; 0: all
    methods: tuple[str, ...] = WHOLE_METHODS
    sgd: SGDSettings = SGDSettings(batch_size=64, max_epochs=30, patience=5, finetune_steps=(),
                                   finetune_batch_size=64)


@dataclass(frozen=True)
class EvalConfig:
    __pydantic_config__ = CONFIG        # unknown keys raise (pudnet.overrides)
    checkpoint: str = ""            # checkpoint dir, model.safetensors or run dir; empty only with --smoke-test
    protocols: tuple[str, ...] = ("tasks", "whole")
    tasks: int = 50                 # sub-datasets per setting (N)
    ways: int = 5                   # K
    shots: int = 10                 # S support images per class
    queries: int = 10               # Q validation images per class (SGD's early stopping)
    test: int = 10                  # T test images per class, never used to learn or stop
    max_per_class: int = 1000       # images read per class and split (sub-dataset protocol)
    methods: tuple[str, ...] = TASK_METHODS
    sgd: SGDSettings = SGDSettings()
    whole: WholeSettings = WholeSettings()
    max_stats_images: int = 1024    # support images a BatchNorm-statistics pass reads at most
    seed: int = 0                   # tasks, class picks, SGD inits and minibatch orders
    device: str = ""                # empty: the first accelerator if any, else the CPU

    def __post_init__(self):
        for field, methods in (("methods", self.methods), ("whole.methods", self.whole.methods)):
            unknown = set(methods) - set(ALL_METHODS)
            if unknown:
                raise ValueError(f"{field}: methods {sorted(unknown)} unknown; choose from {ALL_METHODS}")
        if set(self.protocols) - {"tasks", "whole"} or not self.protocols:
            raise ValueError(f"protocols={self.protocols}: choose from ('tasks', 'whole')")
        for name in ("tasks", "ways", "shots", "queries", "test", "max_stats_images"):
            if getattr(self, name) < (2 if name == "ways" else 1):
                raise ValueError(f"{name}={getattr(self, name)}: too small")
        if not 0 < self.whole.val_fraction < 1 or any(s < 0 or s == 1 for s in self.whole.shots):
            raise ValueError(f"whole.val_fraction must be in (0, 1), whole.shots 0 (all) or >= 2: {self.whole}")


SMOKE = ["tasks=3", "shots=5", "queries=5", "test=5", "max_per_class=100", "sgd.max_epochs=3", "whole.shots=5,20",
         "whole.max_per_class=100", "whole.sgd.max_epochs=3"]
SMOKE_SOURCES = ("digits", "mnist")


@dataclass
class RunRecord:
    """What a training run stored with its checkpoint, read back (never re-derived)."""

    path: str
    model: PudNet
    split: ClassSplit
    roots: list[str]
    train_config: dict | None


def load(cfg: EvalConfig, smoke: bool) -> RunRecord:
    """The run's record from its checkpoint, or a tiny untrained model on two sources for --smoke-test."""
    device = torch.device(cfg.device) if cfg.device else (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu"))
    if not cfg.checkpoint:
        if not smoke:
            raise ValueError("CHECKPOINT is required: a checkpoint or run directory written by jobs/train.py")
        torch.manual_seed(cfg.seed)
        model = PudNet(PudNetConfig(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16))
        roots = list(prepare_sources(SMOKE_SOURCES, default_data_dir(), model.cfg.image_size, cfg.max_per_class,
                                     0.2).values())
        split = split_classes(Catalog(roots).class_names, ["digits"], 0.2, 5, cfg.seed)
        return RunRecord("(smoke test)", model.to(device), split, roots, None)
    from jobs.train import TrainConfig   # here: jobs.train imports this module
    path = checkpoint.newest(cfg.checkpoint)
    loaded = checkpoint.load(path, device)
    meta = loaded.metadata
    if loaded.split is None:
        raise ValueError(f"{path} has no class split: evaluation cannot tell unseen classes")
    train_cfg = from_dict(TrainConfig, json.loads(meta["train_config"])) if "train_config" in meta else None
    if "shard_roots" in meta:
        roots = json.loads(meta["shard_roots"])
    elif train_cfg is not None:     # written before checkpoints recorded their shard roots
        roots = list(prepare_sources(train_cfg.sources, train_cfg.data_dir, train_cfg.model.image_size,
                                     train_cfg.max_per_class, train_cfg.test_fraction).values())
    else:
        raise ValueError(f"{path} records neither shard_roots nor train_config, so its data cannot be found; "
                         "evaluate a checkpoint written by jobs/train.py")
    return RunRecord(str(path), loaded.model, loaded.split, roots,
                     dataclasses.asdict(train_cfg) if train_cfg is not None else None)


def tasks_protocol(cfg: EvalConfig, record: RunRecord, catalog: Catalog, evaluator: Evaluator) -> dict:
    """Many small K-way sub-datasets per setting (``cfg.tasks`` of them). When the held-out classes go beyond
    the 6 base sources (the class bank), "intra: base sources" also scores theirs alone: the setting the
    tables before the bank report."""
    source = {c: m.source for m in catalog.manifests for c in m.classes}
    base = tuple(c for c in record.split.intra_test if source.get(c) in BASE_SOURCES)
    settings = [("intra", record.split.intra_test, False), ("inter", record.split.inter_test, True)]  # by source
    if 0 < len(base) < len([c for c in record.split.intra_test if c in source]):
        settings.insert(1, ("intra: base sources", base, False))
    out = {}
    for setting, names, by_source in settings:
        present = [c for c in names if c in source]
        if len(present) < cfg.ways:
            print(f"{setting}: {len(present)} of its classes available, fewer than K={cfg.ways}: skipped")
            continue
        train, test = (read_class_bank(record.roots, present, part, cfg.max_per_class) for part in ("train", "test"))
        sampler = SubDatasetSampler(train, present, cfg.seed, by_source=by_source, test_bank=test)
        tasks = (sampler.sample(i, cfg.ways, cfg.shots, cfg.queries, cfg.test) for i in range(cfg.tasks))
        out[setting] = evaluate_tasks(evaluator, tasks, cfg.methods,
                                      progress=lambda it: tqdm(it, total=cfg.tasks, desc=setting, file=sys.stdout))
        what = "left-out sources" if setting == "inter" else "held-out classes"
        print(markdown_table(f"{setting}-dataset: {what} of {', '.join(sorted({source[c] for c in present}))}",
                             out[setting]), flush=True)
    return out


def whole_protocol(cfg: EvalConfig, record: RunRecord) -> dict:
    evaluator = Evaluator(record.model, cfg.whole.sgd, cfg.seed, cfg.max_stats_images)
    out = {}
    for name, classes, train, test in read_whole_banks(record.roots, record.split, cfg.whole.shots, cfg.whole.classes,
                                                       record.model.cfg.max_classes, cfg.seed,
                                                       cfg.whole.max_per_class or None):
        shots = evaluate_whole(evaluator, train, test, cfg.whole.shots, cfg.whole.methods, cfg.whole.val_fraction,
                               cfg.seed, progress=lambda it: tqdm(it, desc=f"whole {name}", file=sys.stdout))
        out[name] = {"classes": classes, "shots": shots}
        print(whole_markdown(f"whole dataset, {name}", out[name]), flush=True)
    return out


def run(cfg: EvalConfig, smoke: bool = False) -> dict:
    record = load(cfg, smoke)
    catalog = Catalog(record.roots)
    if catalog.image_size != record.model.cfg.image_size:
        raise ValueError(f"shards at {record.roots} are {catalog.image_size} px, the model takes "
                         f"{record.model.cfg.image_size} px")
    device = next(record.model.parameters()).device
    report = {"config": dataclasses.asdict(cfg), "checkpoint": record.path, "shard_roots": record.roots,
              "train_config": record.train_config, "device": str(device), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if "tasks" in cfg.protocols:
        report["settings"] = tasks_protocol(cfg, record, catalog, Evaluator(record.model, cfg.sgd, cfg.seed,
                                                                            cfg.max_stats_images))
    if "whole" in cfg.protocols:
        report["whole"] = whole_protocol(cfg, record)
    return report


def markdown(report: dict) -> str:
    tables = [whole_markdown(f"whole dataset, {name}", r) for name, r in report.get("whole", {}).items()]
    tables += [markdown_table(f"sub-datasets, {s}", r) for s, r in report.get("settings", {}).items()]
    return "\n\n".join(tables) + "\n"


def write(path: str, data: bytes) -> str:
    """Write ``data`` to a local path or a URI (a run directory may live in object storage)."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)
    return path


def training_curves(run_dir: str) -> str:
    """Draw ``run_dir/metrics.jsonl`` (written by jobs/train.py) into ``run_dir/training_curves.png``."""
    path = join(run_dir, METRICS_FILE)
    records = read_records(path)
    if not records:
        raise FileNotFoundError(f"no training records in {path}: is {run_dir} a run directory of jobs/train.py?")
    return write(join(run_dir, OUTPUTS["curves"]), plots.training_curves(records))


def write_report(report: dict, directory: str) -> list[str]:
    """eval.md, eval.json and eval.png (accuracy against wall time) into ``directory``; returns their paths."""
    return [write(join(directory, OUTPUTS["markdown"]), markdown(report).encode()),
            write(join(directory, OUTPUTS["json"]), json.dumps(report, indent=1).encode()),
            write(join(directory, OUTPUTS["plot"]), plots.accuracy_vs_time(report))]


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="tiny settings; runs in well under a minute")
    parser.add_argument("--out", help="write eval.md, eval.json and eval.png (accuracy vs wall time) here")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--plot", type=Path, help="write accuracy vs wall time (PNG) here")
    parser.add_argument("--curves", metavar="RUN_DIR", help="only draw RUN_DIR/training_curves.png from metrics.jsonl")
    parser.add_argument("args", nargs="*", help="CHECKPOINT, then EvalConfig key=value, e.g. tasks=100 sgd.lr=3e-3")
    args = parser.parse_args(argv)
    if args.curves:
        print(f"wrote {training_curves(args.curves)}")
        return None
    paths, overrides = [a for a in args.args if "=" not in a], [a for a in args.args if "=" in a]
    if len(paths) > 1:
        parser.error(f"one CHECKPOINT expected, got {paths}")
    cfg = apply_overrides(EvalConfig(), (SMOKE if args.smoke_test else []) + [f"checkpoint={p}" for p in paths]
                          + overrides)
    print(json.dumps(dataclasses.asdict(cfg), indent=1))
    report = run(cfg, args.smoke_test)
    written = write_report(report, args.out) if args.out else []
    for path, data in ((args.json, lambda: json.dumps(report, indent=1).encode()),
                       (args.markdown, lambda: markdown(report).encode()),
                       (args.plot, lambda: plots.accuracy_vs_time(report))):
        if path:
            written.append(write(str(path), data()))
    for path in written:
        print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
