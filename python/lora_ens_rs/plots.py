"""Plots of ensemble evaluations (matplotlib, headless Agg backend, PNG files):

- reliability diagram: accuracy vs confidence per bin, one line per model, and questions per bin;
- risk-coverage: selective accuracy against the share of questions answered;
- confidence on wrong predictions: how sure each model is when it is wrong;
- accuracy vs ECE arrows: from one member to the ensemble, per setting;
- training curves: validation NLL and accuracy per epoch and member.

Each function returns a matplotlib Figure; :func:`save` writes it atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_ens_rs import metrics
from lora_ens_rs.atomic import atomic_path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    """Write ``fig`` as PNG atomically (:func:`lora_ens_rs.atomic.atomic_path`), then close it."""
    try:
        with atomic_path(path, fsync=False) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)


#: Reliability bins holding fewer questions than this are drawn hollow: their accuracy is too
#: noisy to read (one question gives 0 or 1).
MIN_BIN_COUNT = 10


def reliability_diagram(
    curves: Mapping[str, np.ndarray],
    answers: np.ndarray,
    n_bins: int = 15,
    min_count: int = MIN_BIN_COUNT,
) -> Any:
    """Accuracy against mean confidence per bin for each model's (N, K) probabilities (top),
    and how many questions fall in each bin (bottom). The diagonal is perfect calibration, the
    legend gives each model's ECE; bins with fewer than ``min_count`` questions are hollow."""
    plt = _plt()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for i, (name, probs) in enumerate(curves.items()):
        color = f"C{i % 10}"
        r = metrics.reliability(probs, answers, n_bins)
        filled = r.count > 0
        big = r.count >= min_count
        ece = metrics.ece(probs, answers, n_bins)
        ax.plot(r.confidence[filled], r.accuracy[filled], color=color, linewidth=1,
                label=f"{name} (ECE {ece:.3f})")  # fmt: skip
        ax.scatter(r.confidence[big], r.accuracy[big], color=color, s=18, zorder=3)
        small = filled & ~big
        ax.scatter(r.confidence[small], r.accuracy[small], facecolors="none", edgecolors=color,
                   s=18, zorder=3)  # fmt: skip
        hist.stairs(r.count, r.edges, color=color, linewidth=1.2)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"Reliability diagram (hollow: bins with < {min_count} questions)", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    hist.axhline(min_count, color="grey", linestyle=":", linewidth=1)
    hist.set(xlabel="confidence (max probability)", ylabel="questions per bin")
    fig.tight_layout()
    return fig


def risk_coverage(curves: Mapping[str, dict[str, Any]]) -> Any:
    """Selective prediction: accuracy on the answered questions against the share answered,
    answering the most certain first, one line per model (legend: its AURC).

    Args:
        curves: name -> dict with ``coverage``, ``accuracy`` and ``aurc`` (as
            :func:`lora_ens_rs.compare.selective` returns).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (name, c) in enumerate(curves.items()):
        ax.plot(c["coverage"], c["accuracy"], color=f"C{i % 10}", linewidth=1.2,
                label=f"{name} (AURC {c['aurc']:.3f})")  # fmt: skip
    ax.set(xlabel="coverage (share of questions answered)", ylabel="accuracy on those answered",
           xlim=(0, 1))  # fmt: skip
    ax.set_title("Selective prediction: answer the most certain first", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def confidence_when_wrong(curves: Mapping[str, np.ndarray], answers: np.ndarray) -> Any:
    """Histogram (density) of the max probability on questions each model gets wrong."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    for name, probs in curves.items():
        p = np.asarray(probs)
        wrong = p.argmax(1) != answers
        if wrong.any():
            ax.hist(p[wrong].max(1), bins=bins, density=True, histtype="step", label=name)
    ax.set(xlabel="confidence on wrong predictions", ylabel="density", xlim=(0, 1))
    ax.set_title("How sure is the model when it is wrong?")
    ax.legend(fontsize=8)
    return fig


def accuracy_vs_ece(points: Sequence[dict[str, Any]]) -> Any:
    """One arrow per setting from a single member (accuracy, ECE) to the ensemble's.

    Args:
        points: dicts with ``label``, ``single`` and ``ensemble`` (each with ``accuracy`` and
            ``ece``).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, p in enumerate(points):
        color = f"C{i % 10}"
        (x0, y0), (x1, y1) = (
            (p["single"]["ece"], p["single"]["accuracy"]),
            (p["ensemble"]["ece"], p["ensemble"]["accuracy"]),
        )
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": color}
        )
        ax.scatter([x0], [y0], color=color, s=12)
        ax.scatter([x1], [y1], color=color, marker="*", s=60, label=p["label"])
    ax.set(xlabel="ECE (lower is better)", ylabel="accuracy")
    ax.set_title("One member (dot) -> ensemble (star)")
    ax.legend(fontsize=7)
    return fig


def training_curves(history: Sequence[dict[str, Any]]) -> Any:
    """Validation NLL and accuracy per epoch, one line per member.

    Args:
        history: dicts with ``member``, ``epoch``, ``nll`` and ``accuracy``.
    """
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    members = sorted({h["member"] for h in history})
    for m in members:
        rows = sorted((h for h in history if h["member"] == m), key=lambda h: h["epoch"])
        epochs = [h["epoch"] for h in rows]
        a1.plot(epochs, [h["nll"] for h in rows], marker="o", label=f"member {m}")
        a2.plot(epochs, [h["accuracy"] for h in rows], marker="o", label=f"member {m}")
    a1.set(xlabel="epoch", ylabel="validation NLL")
    a2.set(xlabel="epoch", ylabel="validation accuracy")
    a1.legend(fontsize=7)
    fig.tight_layout()
    return fig
