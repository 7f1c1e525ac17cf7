"""The meta-training recipe (pudnet.model.recipe): the optimiser's resume contract and the in-process tasks."""
import types

import numpy as np
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.data.tasks import ClassBank, SubDatasetSampler, task_shape
from pudnet.model.meta import Episode, train_step
from pudnet.model.recipe import local_tasks, optimizer_and_schedule

SMALL = dict(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16, layer_embedding=8, max_classes=6)


def recipe(**overrides) -> types.SimpleNamespace:
    """The recipe fields of a TrainConfig, small."""
    cfg = dict(lr=1e-3, base_lr_scale=1.0, weight_decay=0.01, steps=10, warmup_steps=2, lr_schedule="cosine",
               seed=0, ways=2, ways_max=0, shots=2, shots_max=0, queries=2, max_support=40, tasks_per_step=3,
               augment_p_class=0.0, augment_shift=0, augment_p_grey=0.0, within_source=0.0, source_power=1.0)
    return types.SimpleNamespace(**{**cfg, **overrides})


def bank(classes: int = 6, per_class: int = 30) -> ClassBank:
    rng = np.random.default_rng(0)
    return ClassBank(rng.integers(0, 256, (classes * per_class, 32, 32, 3), dtype=np.uint8),
                     np.repeat(np.arange(classes), per_class), tuple(f"a/{c}" for c in range(classes)))


def test_an_optimiser_state_of_one_group_resumes_at_base_lr_scale_1():
    """Checkpoints written before base_lr_scale existed hold AdamW(net.parameters()): one group."""
    torch.manual_seed(0)
    net = PudNet(PudNetConfig(**SMALL))
    old = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    sampler = SubDatasetSampler(bank(), [f"a/{c}" for c in range(6)], seed=0)
    train_step(net, old, [Episode.from_subdataset(sampler.sample(0, 3, 2, 2), net)])
    saved = old.state_dict()
    optimizer, _ = optimizer_and_schedule(net, recipe())
    optimizer.load_state_dict(saved)
    assert len(optimizer.param_groups) == 1
    for p in net.parameters():
        assert torch.equal(optimizer.state[p]["exp_avg"], old.state[p]["exp_avg"])
    train_step(net, optimizer, [Episode.from_subdataset(sampler.sample(1, 3, 2, 2), net)])
    assert all(optimizer.state[p]["step"].item() == 2 for p in net.parameters() if p.grad is not None)
    assert len(optimizer_and_schedule(net, recipe(base_lr_scale=0.1))[0].param_groups) == 2


def test_local_tasks_share_the_first_task_shape_of_their_step_like_the_stream():
    sampler = SubDatasetSampler(bank(), [f"a/{c}" for c in range(6)], seed=0)
    cfg = recipe(ways_max=6, shots_max=10, augment_p_class=1.0)
    for step in range(4):
        tasks = local_tasks(cfg, sampler, step)
        k, s = task_shape(0, 3 * step, (2, 6), (2, 10), 40)
        assert len(tasks) == 3 and all(t.support_y.shape == (k * s,) and t.num_classes == k for t in tasks)
        assert all("@" in name for t in tasks for name in t.class_names)      # augmented, every class
        again = local_tasks(cfg, sampler, step)
        assert all(np.array_equal(a.support_x, b.support_x) for a, b in zip(tasks, again))
