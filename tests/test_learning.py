"""PudNet learns: after a short meta-training on real embedded data, its predicted weights classify
sub-datasets of classes (and of a whole dataset) it never saw far better than random init."""
import pytest
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.data import SubDatasetSampler, split_classes
from pudnet.evaluate import Evaluator, evaluate_tasks
from pudnet.meta import Episode, train_step


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
    for classes, within_source in ((split.intra_test, False), (split.inter_test, True)):
        unseen = SubDatasetSampler(pypi_bank, classes, seed=1, within_source=within_source)
        report = evaluate_tasks(evaluator, [unseen.sample(i, 5, 10, 10, 10) for i in range(30)], methods)["methods"]
        assert report["pudnet"]["accuracy"] >= report["random_init"]["accuracy"] + 0.20, report
        assert report["pudnet"]["accuracy"] > report["random_prototype"]["accuracy"], report   # learned, not free
