"""The meta-training recipe (pudnet.model.recipe): the optimiser's resume contract, the in-process tasks and the
auxiliary co-training on the meta-train classes."""
import dataclasses
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pudnet import PudNet, PudNetConfig
from pudnet.data.tasks import ClassBank, SubDatasetSampler, task_shape
from pudnet.model.meta import Episode, episode_loss, train_step
from pudnet.model.recipe import class_ids, local_tasks, meta_train_local, optimizer_and_schedule, with_aux_classes

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


def test_auxiliary_labels_name_meta_train_classes_and_skip_pseudo_classes():
    classes = [f"a/{c}" for c in range(6)]
    net = PudNet(with_aux_classes(PudNetConfig(**SMALL, aux_weight=0.5), classes))
    assert net.aux_head.out_features == 6 and class_ids(PudNetConfig(**SMALL), classes) is None
    task = SubDatasetSampler(bank(), classes, seed=0).sample(0, 3, 2, 2)
    task = dataclasses.replace(task, class_names=(task.class_names[0] + "@rot90", *task.class_names[1:]))
    ep = Episode.from_subdataset(task, net, class_ids(net.cfg, classes))
    expected = [-1] + [classes.index(name) for name in task.class_names[1:]]
    assert ep.query_class.tolist() == np.repeat(expected, 2).tolist()


def test_the_auxiliary_loss_adds_to_the_episode_loss_and_trains_its_classifier():
    classes = [f"a/{c}" for c in range(6)]
    task = SubDatasetSampler(bank(), classes, seed=0).sample(0, 3, 2, 2)
    losses = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        net = PudNet(with_aux_classes(PudNetConfig(**SMALL, aux_weight=weight), classes))
        losses[weight], _ = episode_loss(net, Episode.from_subdataset(task, net, class_ids(net.cfg, classes)))
    # the same network but for a classifier that starts at zero: it adds 0.5 * ln 6, chance over the 6 classes
    assert abs(losses[0.5].item() - losses[0.0].item() - 0.5 * np.log(6)) < 1e-5
    losses[0.5].backward()
    assert net.aux_head.weight.grad.abs().sum() > 0
    only_pseudo = dataclasses.replace(task, class_names=tuple(f"{n}@rot90" for n in task.class_names))
    net.zero_grad()
    loss, _ = episode_loss(net, Episode.from_subdataset(only_pseudo, net, class_ids(net.cfg, classes)))
    loss.backward()                                  # no labelled query: finite, and every parameter has a gradient
    assert torch.isfinite(loss) and net.aux_head.weight.grad is not None and not net.aux_head.weight.grad.any()


def test_in_process_meta_training_sizes_the_auxiliary_classifier_to_its_classes():
    classes = [f"a/{c}" for c in range(6)]
    cfg = recipe(steps=2, tasks_per_step=1, model=PudNetConfig(**SMALL, aux_weight=0.5), grad_clip=1.0)
    net = meta_train_local(cfg, SubDatasetSampler(bank(), classes, seed=0))
    assert net.cfg.aux_classes == 6 and net.aux_head.weight.shape == (6, net.target.spec.feature_dim)


def test_negative_or_unsized_auxiliary_settings_are_refused():
    with pytest.raises(ValueError, match="aux_weight"):
        PudNetConfig(**SMALL, aux_weight=-1.0)
    with pytest.raises(ValueError, match="aux_classes"):
        PudNet(PudNetConfig(**SMALL, aux_weight=0.5))


def test_without_the_auxiliary_loss_the_episode_loss_is_the_generated_targets_query_loss():
    """The loss reads the query features once for both losses; alone it must be the target's own cross-entropy."""
    torch.manual_seed(0)
    net = PudNet(PudNetConfig(**SMALL))
    ep = Episode.from_subdataset(SubDatasetSampler(bank(), [f"a/{c}" for c in range(6)], seed=0).sample(0, 3, 2, 2), net)
    loss, accuracy = episode_loss(net, ep)
    logits = net.target(net(ep.support_x, ep.support_y, ep.num_classes), ep.query_x)
    assert torch.equal(loss, F.cross_entropy(logits, ep.query_y))
    assert accuracy.item() == (logits.argmax(1) == ep.query_y).float().mean().item()
