import pytest

from pudnet.evaluate import Point, TaskResult, markdown_table, summarize, time_to_equal_accuracy


def result(pudnet_acc, curve):
    return TaskResult({"pudnet": (pudnet_acc, 0.01)}, [Point(i, s, 0.0, a) for i, (s, a) in enumerate(curve)])


def test_summarize_expected_numbers():
    results = [TaskResult({"m": (0.5, 1.0)}), TaskResult({"m": (0.7, 3.0)})]
    s = summarize(results)["m"]
    assert s["accuracy"] == pytest.approx(0.6) and s["seconds"] == pytest.approx(2.0) and s["tasks"] == 2
    assert s["ci95"] == pytest.approx(1.96 * 0.1414213 / 2 ** 0.5, rel=1e-4)


def test_time_to_equal_accuracy_uses_the_mean_curve_and_pads_stopped_tasks():
    # PudNet mean 0.7 in 0.01 s; mean SGD curve: (1 s, 0.4), (2 s, 0.65), (2.5 s, 0.75 - second task stopped)
    results = [result(0.6, [(1, 0.3), (2, 0.6), (3, 0.8)]), result(0.8, [(1, 0.5), (2, 0.7)])]
    r = time_to_equal_accuracy(results)
    assert r["reached"] and r["sgd_seconds"] == pytest.approx(2.5) and r["ratio"] == pytest.approx(250)
    never = time_to_equal_accuracy([result(0.9, [(1, 0.3), (4, 0.5)])])
    assert not never["reached"] and never["ratio"] == pytest.approx(400)         # a lower bound
    assert "lower bound" in markdown_table("x", {"methods": summarize([result(0.9, [])]),
                                                 "time_to_equal_accuracy": never})
