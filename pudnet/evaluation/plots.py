"""The pictures a run leaves behind: accuracy against wall time, and the training curves.

Matplotlib with the Agg backend (no display needed); imported only when a picture is drawn.
"""
from __future__ import annotations

import io

from .episodes import METHOD_LABELS


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig, rect=(0, 0, 1, 1)) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout(rect=rect)
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def _panel(ax, result: dict, title: str) -> None:
    """One task setting: a marker per method at (seconds, accuracy), Adam from scratch as its curve."""
    for method, r in result["methods"].items():
        if method.startswith("sgd"):
            continue
        line = ax.errorbar(r["seconds"], 100 * r["accuracy"], yerr=100 * r["ci95"] or None, fmt="o", capsize=3,
                           label=METHOD_LABELS.get(method, method))
        ax.axhline(100 * r["accuracy"], color=line[0].get_color(), ls=":", lw=0.8)
    curve = result.get("sgd_curve")
    if curve:
        ax.plot([p["seconds"] for p in curve], [100 * p["test"] for p in curve], "k-", marker=".", ms=3,
                label="Adam from scratch (curve; stops on validation)")
    ax.set(xscale="log", xlabel="wall seconds (log)", ylabel="test accuracy (%)", title=title)
    ax.xaxis.set_minor_formatter("")     # minor-tick labels of a short log axis overlap
    ax.grid(alpha=0.3)


def accuracy_vs_time(report: dict) -> bytes:
    """PNG: one row per whole-dataset task with one panel per S, then a row for the sub-dataset protocol."""
    plt = _pyplot()
    rows = [[(f"{name}, S={s}", r) for s, r in task["shots"].items()] for name, task in report.get("whole", {}).items()]
    if report.get("settings"):
        rows.append([(f"{setting}: sub-datasets", r) for setting, r in report["settings"].items()])
    if not rows:
        raise ValueError("the report holds no results to plot")
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(5.5 * cols, 4.2 * len(rows)), squeeze=False)
    for row, panels in zip(axes, rows):
        for ax, (title, result) in zip(row, panels):
            _panel(ax, result, title)
        for ax in row[len(panels):]:
            ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    return _png(fig, rect=(0, 0.04 + 0.06 / len(rows), 1, 1))


CURVES = (("loss", "meta-training loss"), ("query_accuracy", "query accuracy (training tasks)"),
          ("val_accuracy", "validation accuracy (held-out classes)"), ("tasks_per_s", "tasks / s"))


def training_curves(records: list[dict]) -> bytes:
    """PNG of loss, query and validation accuracy, and tasks/s against steps, from metrics.jsonl records.

    Records with an ``event`` (e.g. the start record of each (re)start) are not metrics and are skipped.
    """
    metrics = [r for r in records if "event" not in r and "step" in r]
    if not metrics:
        raise ValueError("no metric records (lines with a 'step' and no 'event') to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], CURVES):
        points = [(r["step"], r[key]) for r in metrics if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
    return _png(fig)
