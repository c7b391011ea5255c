"""Plots of a run: training curves, the confusion matrix and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from .storage import write_with  # noqa: E402


def _save(fig, path: Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def plot_training_curves(log: list[dict], path: str | Path) -> None:
    steps = [r for r in log if r.get("loss") is not None]
    vals = [r for r in log if "val_accuracy" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], marker=".")
    axes[0].set(title="training loss", xlabel="optimizer step", ylabel="cross-entropy over label tokens")
    axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps], color="tab:orange")
    axes[1].set(title="learning rate", xlabel="optimizer step")
    axes[2].plot([r["step"] for r in vals], [r["val_accuracy"] for r in vals], marker="o", color="tab:green")
    axes[2].set(title="validation accuracy", xlabel="optimizer step", ylim=(0, 1))
    if not vals:
        axes[2].text(0.5, 0.5, "no validation sample\n(data.val_size = 0)", ha="center", va="center",
                     transform=axes[2].transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, Path(path))


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: str | Path, title: str = "") -> None:
    """Counts and row-normalised shares (the recall of each actual class), coloured by share, so
    unbalanced classes stay readable; it grows with the number of classes."""
    m = np.asarray(matrix, dtype=float)
    shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k = len(labels)
    size = max(4.2, 1.0 + 0.9 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(m[i, j])}\n{100 * shares[i, j]:.0f}%", ha="center", va="center",
                    fontsize=9 if k <= 6 else 7, color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="actual",
           title=title or "confusion matrix")
    ax.set_xticklabels(labels, rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticklabels(labels)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the actual class")
    _save(fig, Path(path))


def plot_calibration(table: list[dict], path: str | Path, title: str = "",
                     xlabel: str = "predicted probability") -> None:
    """Reliability diagram of ``metrics.reliability``'s bins (the diagonal is perfect): p(second
    class) for two classes, else the top label's confidence, which ``xlabel`` should name."""
    used = [b for b in table if b["n"]]
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.bar([(b["low"] + b["high"]) / 2 for b in used], [b["frequency"] for b in used],
           width=[b["high"] - b["low"] for b in used], edgecolor="black", alpha=0.6, label="observed")
    ax.plot([b["mean_prob"] for b in used], [b["frequency"] for b in used], marker="o", color="tab:red",
            label="bin mean")
    for b in used:
        ax.text((b["low"] + b["high"]) / 2, 0.02, str(b["n"]), ha="center", fontsize=7, rotation=90)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel="observed frequency",
           title=title or "calibration")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, Path(path))
