"""PudNet learns: after a short meta-training on real embedded data, its predicted weights classify
sub-datasets of classes (and of a whole dataset) it never saw far better than random init."""
import dataclasses

import pytest
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.data.tasks import SubDatasetSampler, split_classes
from pudnet.evaluation.episodes import Evaluator, evaluate_tasks
from pudnet.model.meta import Episode, train_step
from conftest import TINY_MODEL


@pytest.mark.integration
def test_meta_training_beats_random_init_by_20_points_on_unseen_sub_datasets(pypi_bank):
    torch.manual_seed(0)
    split = split_classes(pypi_bank.class_names, ["digits"], intra_fraction=0.25, min_intra=5, seed=0)
    model = PudNet(PudNetConfig())                                   # the default convnet target
    sampler = SubDatasetSampler(pypi_bank, split.meta_train, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(300):
        train_step(model, optimizer, [Episode.from_subdataset(sampler.sample(step, 5, 10, 10), model)])
    evaluator = Evaluator(model)
    methods = ("random_init", "random_prototype", "pudnet")
    for classes, by_source in ((split.intra_test, False), (split.inter_test, True)):
        unseen = SubDatasetSampler(pypi_bank, classes, seed=1, by_source=by_source)
        report = evaluate_tasks(evaluator, [unseen.sample(i, 5, 10, 10, 10) for i in range(30)], methods)["methods"]
        assert report["pudnet"]["accuracy"] >= report["random_init"]["accuracy"] + 0.20, report
        assert report["pudnet"]["accuracy"] > report["random_prototype"]["accuracy"], report   # learned, not free


@pytest.mark.integration
def test_ridge_head_uses_a_whole_unseen_dataset_better_than_class_means(pypi_bank):
    """Whole left-out dataset (all 10 digits, S=100 per class, every test image): the meta-trained
    ridge head beats the random net + class-mean head, and the same generated body with a class-mean
    (prototype) head instead, by a margin."""
    torch.manual_seed(0)
    split = split_classes(pypi_bank.class_names, ["digits"], intra_fraction=0.25, min_intra=5, seed=0)
    model = PudNet(PudNetConfig(**TINY_MODEL, head="ridge"))
    sampler = SubDatasetSampler(pypi_bank, split.meta_train, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(150):
        train_step(model, optimizer, [Episode.from_subdataset(sampler.sample(step, 5, 5, 5), model)])
    whole = SubDatasetSampler(pypi_bank, split.inter_test, seed=1)
    task = whole.sample(0, 10, 100, 1, min(len(whole.test_pool[c]) for c in split.inter_test))
    scores = Evaluator(model.eval()).run(task, 0, ("pudnet", "random_prototype")).scores
    as_prototype = PudNet(dataclasses.replace(model.cfg, head="prototype"))
    as_prototype.load_state_dict(model.state_dict(), strict=False)
    prototype = Evaluator(as_prototype.eval()).run(task, 0, ("pudnet",)).scores["pudnet"][0]
    # measured (seed 0): ridge 90.0, random net + class means 68.9, the same body with a prototype head 80.3
    assert scores["pudnet"][0] >= scores["random_prototype"][0] + 0.10, (scores, prototype)
    assert scores["pudnet"][0] >= prototype + 0.04, (scores, prototype)
