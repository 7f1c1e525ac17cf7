"""jobs/train.py's default sources: every installed one of ``DEFAULT_SOURCES`` (the 6 base sources and the class
bank), the missing ones named and left out; sources named explicitly must all be there. No Ray: which sources
are installed is faked at ``jobs.sharding.prepare_embedded``, which writes tiny real shards into a temp data dir."""
import numpy as np
import pytest

from jobs import sharding
from jobs.train import load_config, training_data
from pudnet.data.shards import write_bank
from pudnet.data.sources import BANK_SOURCES, BASE_SOURCES, DEFAULT_SOURCES
from pudnet.data.tasks import ClassBank


def tiny_bank(source, classes=6, per_class=30, size=32):
    rng = np.random.default_rng(len(source))
    return ClassBank(rng.integers(0, 255, (classes * per_class, size, size, 3), dtype=np.uint8),
                     np.repeat(np.arange(classes), per_class), tuple(f"{source}/c{i}" for i in range(classes)))


@pytest.fixture
def installed(monkeypatch):
    """Sets which embedded sources count as installed; returns the list of calls prepare_embedded got."""
    calls, state = [], {"installed": ()}

    def prepare_embedded(sources, data_dir, image_size, max_per_class, test_fraction=0.2, seed=0):
        calls.append(list(sources))
        roots = {}
        for s in sources:
            if s in state["installed"]:
                roots[s] = sharding.embedded_root(data_dir, s, image_size, max_per_class)
                write_bank(tiny_bank(s, size=image_size), roots[s], s, {"kind": "test"}, test_fraction, seed)
        return roots, {s: f"run `apt-get install {s}-package`" for s in sources if s not in roots}

    monkeypatch.setattr(sharding, "prepare_embedded", prepare_embedded)

    def set_installed(*sources):
        state["installed"] = sources
        return calls
    return set_installed


def config(tmp_path, *overrides):
    return load_config(overrides=[f"data_dir={tmp_path / 'shards'}", *overrides])


def test_the_default_takes_every_installed_source_and_names_the_missing_ones(tmp_path, installed, capsys):
    calls = installed("mnist", "digits", "fashion_mnist", "icons", "glyphs")
    cfg, roots, split, classes = training_data(config(tmp_path))
    assert calls == [list(DEFAULT_SOURCES)]                  # the one list: base sources and the bank
    assert cfg.sources == ("mnist", "digits", "fashion_mnist", "icons", "glyphs")   # DEFAULT_SOURCES' order
    assert cfg.heldout_sources == ("fashion_mnist",)
    assert len(roots) == 5 and all(r.startswith(str(tmp_path)) for r in roots)
    assert {c.split("/")[0] for c in split.inter_test} == {"fashion_mnist"}
    assert {c.split("/")[0] for c in split.meta_train + split.intra_test} == {"mnist", "digits", "icons", "glyphs"}
    assert set(classes) <= set(split.meta_train)
    out = capsys.readouterr().out
    missing = sorted(set(DEFAULT_SOURCES) - set(cfg.sources))
    assert f"sources: not installed, left out: {missing}" in out
    assert "sources: ['mnist', 'digits', 'fashion_mnist', 'icons', 'glyphs']" in out


def test_without_the_bank_or_fashion_mnist_the_default_still_runs_with_no_inter_setting(tmp_path, installed, capsys):
    installed("mnist", "digits", "animal_mnist")             # a PyPI-only machine (PUDNET_BANK=default, no apt)
    cfg, roots, split, classes = training_data(config(tmp_path))
    assert cfg.sources == ("mnist", "digits", "animal_mnist") and cfg.heldout_sources == ()
    assert split.inter_test == () and split.intra_test and classes
    missing = sorted(set(BANK_SOURCES) | {"fashion_mnist", "openclipart", "emoji"})
    assert f"sources: not installed, left out: {missing}" in capsys.readouterr().out


def test_named_sources_win_and_a_missing_one_is_an_error_naming_it(tmp_path, installed):
    calls = installed(*BASE_SOURCES)
    cfg, roots, split, _ = training_data(config(tmp_path, "sources=mnist,digits,fashion_mnist"))
    assert calls == [["mnist", "digits", "fashion_mnist"]] and cfg.sources == ("mnist", "digits", "fashion_mnist")
    with pytest.raises(ValueError, match=r"\['icons'\] are not installed: icons: run `apt-get install icons-package`"):
        training_data(config(tmp_path, "sources=mnist,digits,fashion_mnist,icons"))


def test_heldout_sources_are_checked_against_the_default_list():
    assert load_config().sources == ()                       # resolved by training_data, not at load time
    with pytest.raises(ValueError, match="heldout_sources"):
        load_config(overrides=["heldout_sources=imagenet"])
