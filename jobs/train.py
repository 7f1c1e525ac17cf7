"""Meta-train PudNet (arXiv 2310.11862) on Ray: Ray Data streams sub-datasets from shards to Ray Train DDP workers.

    python jobs/train.py                     # embedded default: local Ray cluster, 2 CPU workers, then evaluation
    python jobs/train.py --smoke-test        # tiny config, 2 workers, a few steps: about a minute on 2 cores
    python jobs/train.py --config cluster/configs/single_gpu.yaml steps=20000 model.hidden=256
    python jobs/train.py --address HEAD:6379 ...  # an existing cluster (also RAY_ADDRESS); default: a new local one
    ray job submit --working-dir . -- python jobs/train.py --config cluster/configs/imagenet_resnet18.yaml

Embedded sources are written as shards into ``data_dir`` on first use (``jobs/prepare_data.py embedded``);
other sources are shard directories prepared with ``jobs/prepare_data.py``. By default (``sources`` empty) the
job meta-trains on every installed one of ``pudnet.data.sources.DEFAULT_SOURCES``, the 6 base sources and the
class bank that ``scripts/setup.sh`` installs, and prints which it uses and which are missing; a source named in
``sources`` must be installed. Re-running with the same
``name`` and ``storage_path`` resumes from the run's latest checkpoint. Progress lines start with
``[pudnet]``; every report also goes to ``<storage_path>/<name>/metrics.jsonl`` and the Ray dashboard.

Ray 2.60 enables token authentication: start every node and submit with ``RAY_AUTH_MODE=token`` and the
cluster's token (``RAY_AUTH_TOKEN`` from a secret, or the file ``ray get-auth-token --generate`` writes).
The test suite runs throwaway clusters on 127.0.0.1 with ``RAY_AUTH_MODE=disabled`` on both sides.
"""

import argparse
import dataclasses
import functools
import json
import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import yaml

from jobs import evaluate, train_state
from jobs.chaos import inject_failure
from jobs.connect import ray_cluster, run_job
from jobs.ddp import digest, gather
from jobs.metrics import Reporter, StepWindow, versions
from jobs.progress import METRICS_FILE, RunProgress
from jobs.sharding import default_data_dir, prepare_sources, source_root
from jobs.stream import make_stream
from pudnet import PudNet, PudNetConfig
from pudnet.model import recipe
from pudnet.overrides import CONFIG, apply_overrides, from_dict
from pudnet.data.tasks import ClassSplit, SubDatasetSampler
from pudnet.evaluation.episodes import FAST_METHODS
from pudnet.model.meta import Episode, episode_loss, train_step
from pudnet.data.sources import DEFAULT_SOURCES
from pudnet.data.shards import Catalog, read_class_bank
from pudnet.files import absolute, join
from pudnet.data.stream import class_split, subdatasets, trainable_classes


@dataclass
class TrainConfig:
    """Everything a run needs; printed first, stored in every checkpoint."""

    __pydantic_config__ = CONFIG        # unknown keys raise (pudnet.overrides)

    model: PudNetConfig = field(default_factory=PudNetConfig)  # hypernetwork and target (pudnet.model.config)
    sources: tuple[str, ...] = ()   # () = every installed one of pudnet.data.sources.DEFAULT_SOURCES (the 6 + the bank)
    heldout_sources: tuple[str, ...] = ("fashion_mnist",)  # left out whole: the inter-dataset setting
    intra_fraction: float = 0.2     # share of the other sources' classes held out: the intra-dataset setting
    min_intra: int = 5
    split_seed: int = 0             # seeds the class split (written next to the shards and into checkpoints)
    max_per_class: int = 1000       # images per class taken from each embedded source
    test_fraction: float = 0.2      # images per class kept as test images when sharding embedded sources
    data_dir: str = ""              # shards + class splits; "" = $PUDNET_CACHE_DIR/shards or ~/.cache/pudnet/shards
    ways: int = 5                   # K classes per sub-dataset
    shots: int = 10                 # S support images per class
    queries: int = 10               # Q query images per class (the meta-training loss)
    ways_max: int = 0               # > 0: each step's K is drawn from [ways, ways_max] (pudnet.data.tasks.task_shape)
    shots_max: int = 0              # > 0: each step's S is drawn log-uniform from [shots, shots_max]
    max_support: int = 1000         # and S is lowered so that K*S stays within this (a step's cost)
    within_source: float = 0.0      # share of tasks whose K classes all come from one source (tasks.ClassDraw)
    source_power: float = 1.0       # a source of n classes gets about n ** this of the draws, relatively (1: uniform)
    tasks_per_step: int = 1         # sub-datasets per worker per optimiser step (gradient accumulation)
    steps: int = 2000
    lr: float = 1e-3
    base_lr_scale: float = 1.0      # the generators' base kernels learn at lr times this (pudnet.model.recipe)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "cosine"     # "cosine" (decays to 0 at `steps`) or "constant", after the linear warm-up
    grad_clip: float = 1.0
    augment_p_class: float = 0.5    # pudnet.data.augment in the stream: share of classes rotated/inverted into new ones
    augment_shift: int = 2          # and per-image random shifts of up to this many pixels (0 and 0: off)
    augment_p_grey: float = 0.0     # share of tasks turned grey whole (0.5 did not help: bench/results_bank_scale.md)
    window_rows: int = 0            # rows a class's read window spans per task (0: just S+Q; see pudnet.data.stream)
    stream_actors: int = 1          # Ray Data actors building sub-datasets
    stream_cpus: float = 0.5        # CPUs per stream actor
    stream_cache_mb: int = 512      # per actor: recently read shard blocks kept in memory
    log_every: int = 50
    val_every: int = 500            # validation accuracy on held-out classes' train images (never test images)
    val_tasks: int = 20
    eval_tasks: int = 50            # final evaluation tasks per setting (0 skips it)
    eval_images_per_class: int = 200  # cap per class and split read for validation and evaluation
    eval_protocols: tuple[str, ...] = ("tasks", "whole")   # end-of-run evaluation (jobs/evaluate.py protocols)
    checkpoint_every: int = 500
    num_to_keep: int = 2
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5    # below 1 on small machines, or the stream gets no CPU and training hangs
    placement_strategy: str = "PACK"  # of the workers over nodes: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD
    storage_path: str = "runs"      # local dir or URI (s3://...): checkpoints and metrics.jsonl under <name>/
    name: str = "pudnet-embedded"   # same name and storage_path = resume; "" = a fresh timestamped name
    max_failures: int = 2
    seed: int = 0
    fail_at_step: int = 0           # chaos test: the last rank raises once at this step (0: never)

    def __post_init__(self):
        checks = {"ways": (2 <= self.ways <= self.model.max_classes, f"2..model.max_classes={self.model.max_classes}"),
                  "ways_max": (self.ways_max == 0 or self.ways <= self.ways_max <= self.model.max_classes,
                               "0 or ways..model.max_classes"),
                  "shots_max": (self.shots_max == 0 or self.shots_max >= self.shots, "0 or >= shots"),
                  "lr_schedule": (self.lr_schedule in ("cosine", "constant"), "'cosine' or 'constant'"),
                  "placement_strategy": (self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
                                         "PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"),
                  "heldout_sources": (set(self.heldout_sources) < set(self.sources or DEFAULT_SOURCES),
                                      "a strict subset of sources"),
                  "intra_fraction": (0 <= self.intra_fraction < 1, "[0, 1)"),
                  "augment_p_class": (0 <= self.augment_p_class <= 1, "[0, 1]"),
                  "augment_p_grey": (0 <= self.augment_p_grey <= 1, "[0, 1]"),
                  "within_source": (0 <= self.within_source <= 1, "[0, 1]"),
                  "source_power": (0 <= self.source_power <= 1, "[0, 1]"),
                  "test_fraction": (0 < self.test_fraction < 1, "(0, 1)"),
                  "cpus_per_worker": (self.cpus_per_worker > 0, "> 0"), "stream_cpus": (self.stream_cpus > 0, "> 0"),
                  "lr": (self.lr > 0, "> 0"), "base_lr_scale": (self.base_lr_scale >= 0, ">= 0"), "grad_clip": (self.grad_clip > 0, "> 0"),
                  "name": ("/" not in self.name, "no '/'"),
                  "eval_protocols": (set(self.eval_protocols) <= {"tasks", "whole"}, "tasks and/or whole")}
        for key in ("shots", "queries", "tasks_per_step", "steps", "log_every", "max_support", "val_every",
                    "checkpoint_every", "num_to_keep", "num_workers", "stream_actors", "max_per_class",
                    "eval_images_per_class"):
            checks[key] = (getattr(self, key) >= 1, ">= 1")
        for key in ("weight_decay", "warmup_steps", "window_rows", "val_tasks", "eval_tasks", "max_failures",
                    "min_intra", "fail_at_step", "stream_cache_mb", "augment_shift"):
            checks[key] = (getattr(self, key) >= 0, ">= 0")
        bad = [f"{k}={getattr(self, k)!r} (allowed: {allowed})" for k, (ok, allowed) in checks.items() if not ok]
        if bad:
            raise ValueError("bad TrainConfig values: " + "; ".join(bad))


SMOKE_TEST = ["sources=digits,mnist,animal_mnist", "heldout_sources=digits", "max_per_class=200", "steps=6",
              "ways=5", "shots=5", "queries=5", "log_every=2", "val_every=4", "val_tasks=4", "checkpoint_every=3",
              "eval_tasks=5", "eval_protocols=tasks", "warmup_steps=0", "name=",
              'model.target_kwargs={"depth": 3, "width": 16}', "model.encoder_width=8", "model.hidden=32",
              "model.layer_embedding=8", "model.max_classes=10"]


def load_config(config: str | None = None, smoke_test: bool = False, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file, then the smoke-test settings, then ``key=value`` overrides."""
    cfg = TrainConfig()
    if config:
        cfg = from_dict(TrainConfig, yaml.safe_load(Path(config).read_text()) or {})
    cfg = apply_overrides(cfg, (SMOKE_TEST if smoke_test else []) + list(overrides))
    return dataclasses.replace(cfg, data_dir=absolute(cfg.data_dir or default_data_dir()), storage_path=absolute(cfg.storage_path),
                               name=cfg.name or f"pudnet-{time.strftime('%Y%m%d-%H%M%S')}")


def validation_episodes(cfg: TrainConfig, roots: list[str], split: ClassSplit, net: PudNet) -> list[Episode]:
    """Fixed sub-datasets of the held-out (intra) classes, from their train images only."""
    if not cfg.val_tasks or not split.intra_test:
        return []
    bank = read_class_bank(roots, split.intra_test, "train", cfg.eval_images_per_class)
    sampler = SubDatasetSampler(bank, split.intra_test, cfg.seed, test_fraction=0.0)
    return [Episode.from_subdataset(sampler.sample(i, cfg.ways, cfg.shots, cfg.queries), net)
            for i in range(cfg.val_tasks)]


@torch.no_grad()
def accuracy(net: PudNet, episodes: list[Episode]) -> float:
    """Mean query accuracy of the targets generated for ``episodes``."""
    net.eval()
    return sum(episode_loss(net, ep)[1].item() for ep in episodes) / len(episodes)


def training_data(cfg: TrainConfig) -> tuple[TrainConfig, list[str], ClassSplit, list[str]]:
    """``cfg`` with the sources it uses (by default the installed ones), their shard directories (embedded
    sources sharded on first use), the class split, and the meta-train classes with enough train images for a
    task: what the stream is built from. A named source that is not installed raises ValueError."""
    prepared = prepare_sources(cfg.sources or DEFAULT_SOURCES, cfg.data_dir, cfg.model.image_size, cfg.max_per_class,
                               cfg.test_fraction, optional=() if cfg.sources else DEFAULT_SOURCES)
    if not cfg.sources:     # the default: left-out sources that are not installed are left out too
        cfg = dataclasses.replace(cfg, sources=tuple(prepared),
                                  heldout_sources=tuple(s for s in cfg.heldout_sources if s in prepared))
        print(f"sources: {list(cfg.sources)} (the installed default sources; left out whole: "
              f"{list(cfg.heldout_sources)})", flush=True)
    roots = list(prepared.values())
    catalog = Catalog(roots)
    if catalog.image_size != cfg.model.image_size:
        raise ValueError(f"shards at {roots} are {catalog.image_size} px but model.image_size={cfg.model.image_size}")
    # a source's classes are named by its manifest (a folder source `pets-32px` holds classes `pets/...`)
    held = {absolute(source_root(s, cfg.data_dir, cfg.model.image_size, cfg.max_per_class))
            for s in cfg.heldout_sources}
    heldout = [m.source for root, m in zip(catalog.roots, catalog.manifests) if root in held]
    split = class_split(cfg.data_dir, catalog.class_names, heldout, cfg.intra_fraction, cfg.min_intra, cfg.split_seed)
    need = max(cfg.shots, cfg.shots_max) + cfg.queries
    classes, small = trainable_classes(catalog, split.meta_train, need)
    print(f"classes: {len(split.meta_train)} meta-train ({len(small)} with < {need} train images "
          f"left out), {len(split.intra_test)} intra-test, {len(split.inter_test)} inter-test", flush=True)
    return dataclasses.replace(cfg, model=recipe.with_aux_classes(cfg.model, classes)), roots, split, classes


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: DDP meta-training on its share of the stream; rank 0 validates and checkpoints."""
    cfg, split, roots = from_dict(TrainConfig, config["cfg"]), ClassSplit.from_json(config["split"]), config["roots"]
    ctx = ray.train.get_context()
    rank, world, device = ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    net = PudNet(cfg.model)
    model = ray.train.torch.prepare_model(net)          # DDP (gloo on CPU, NCCL on GPU); net moves to `device`
    optimizer, scheduler = recipe.optimizer_and_schedule(net, cfg)    # the recipe bench/ runs in-process too
    step = train_state.restore(ray.train.get_checkpoint(), net, optimizer, scheduler, split)
    class_ids = recipe.class_ids(cfg.model, config["classes"])
    autocast = functools.partial(torch.autocast, device.type, torch.bfloat16, enabled=cfg.use_gpu)
    val = validation_episodes(cfg, roots, split, net) if rank == 0 else []
    run_dir = join(cfg.storage_path, cfg.name)
    start = {"step": step, "weights": digest(net), "nodes": gather(ray.get_runtime_context().get_node_id())}
    reporter = Reporter(run_dir, cfg.name, cfg.steps, device, start) if rank == 0 else None
    batches = iter(ray.train.get_dataset_shard("train").iter_batches(
        batch_size=cfg.tasks_per_step, batch_format="numpy", drop_last=True, prefetch_batches=2))
    window = StepWindow(cfg.tasks_per_step * world, cfg.ways * (cfg.shots + cfg.queries))
    while step < cfg.steps:
        tick = time.perf_counter()
        batch = next(batches)
        tock = time.perf_counter()
        episodes = [Episode.from_subdataset(s, net, class_ids) for s in subdatasets(batch)]
        with autocast():
            loss, acc = train_step(model, optimizer, episodes, cfg.grad_clip)
        scheduler.step()
        step += 1
        window.add(loss, acc, tock - tick, time.perf_counter() - tock)
        save = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if save or step % cfg.log_every == 0:
            metrics = {"step": step, "lr": scheduler.get_last_lr()[0], **window.summary(device)}
            if save:
                metrics["weights"] = gather(digest(net))      # identical on every rank, or DDP is broken
            if rank == 0:
                if val and (step % cfg.val_every == 0 or step == cfg.steps):
                    with autocast():
                        metrics["val_accuracy"] = accuracy(net, val)
                reporter.log(metrics, window.tasks)
            if save and rank == 0:      # rank 0 writes the checkpoint into a temporary directory and reports it
                with tempfile.TemporaryDirectory() as d:
                    train_state.save(d, metrics, net, optimizer, scheduler, split, config["cfg"], roots)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)
            window = StepWindow(window.tasks_per_step, window.images_per_task)
        if step == cfg.fail_at_step and rank == world - 1:
            inject_failure(run_dir, step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TrainConfig YAML (cluster/configs/)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny CPU config: 2 workers, a few steps")
    parser.add_argument("--address", help="Ray cluster (host:port, auto); default RAY_ADDRESS, else a new local one")
    parser.add_argument("overrides", nargs="*", help="key=value, nested as model.arch=resnet18")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.smoke_test, args.overrides)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    print(json.dumps({"config": dataclasses.asdict(cfg), "git_commit": commit, **versions(),
                      "world_size": cfg.num_workers}, indent=1), flush=True)
    logging.getLogger("ray.data").setLevel(logging.WARNING)   # our own lines say what the data steps do
    run_dir = join(cfg.storage_path, cfg.name)
    with ray_cluster(args.address) as where:
        print(f"ray cluster: {where}; worker logs on its dashboard", flush=True)
        cfg, roots, split, classes = training_data(cfg)
        with RunProgress(join(run_dir, METRICS_FILE), cfg.steps):
            result = fit(cfg, roots, split, classes)
    written = [evaluate.training_curves(run_dir)]
    if cfg.eval_tasks:   # after the cluster is gone: evaluation needs none, and the timed methods get every CPU
        with result.checkpoint.as_directory() as d:
            report = evaluate.run(evaluate.EvalConfig(
                checkpoint=d, tasks=cfg.eval_tasks, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries,
                max_per_class=cfg.eval_images_per_class, methods=FAST_METHODS + ("pudnet_ft10",), seed=cfg.seed,
                protocols=cfg.eval_protocols))
        written += evaluate.write_report(report, run_dir)
    print(f"\nfinal checkpoint: {result.checkpoint.path}\nmetrics: {run_dir}/{METRICS_FILE}", flush=True)
    for path in written:
        print(f"wrote {path}", flush=True)


def fit(cfg: TrainConfig, roots: list[str], split: ClassSplit, classes: list[str]) -> ray.train.Result:
    """Meta-train on the connected cluster; returns Ray Train's result."""
    ray.data.DataContext.get_current().enable_progress_bars = False   # the driver's RunProgress is the one display
    config = {"cfg": dataclasses.asdict(cfg), "split": split.to_json(), "roots": roots, "classes": classes}
    run_dir = join(cfg.storage_path, cfg.name)
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker},
                                               placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(name=cfg.name, storage_path=cfg.storage_path,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep),
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": functools.partial(make_stream, cfg, roots, classes, run_dir)},
        # which worker trains on which task no longer depends on timing or on where blocks lie: a run repeats
        # to the bit (tests/test_train_job.py); on several nodes the split then ignores block locality
        dataset_config=ray.train.DataConfig(execution_options=ray.data.ExecutionOptions(preserve_order=True)))
    return trainer.fit()


if __name__ == "__main__":
    from jobs import train  # the importable module, not __main__: Ray pickles TrainConfig by reference, so the
    run_job(train.main)     # workers' dataclass is the real one (pydantic refuses a by-value copy's fields)
