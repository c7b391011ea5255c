"""Plots of a run: training curves, the confusion matrix and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .storage import write_with


def _pyplot():
    """Matplotlib's pyplot, headless (servers, CI), imported on the first plot: its import is slow,
    and a command that fails or is stopped before plotting should not wait on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _pyplot().close(fig)


def plot_training_curves(log: list[dict], path: str | Path) -> None:
    """Loss, learning rate and validation accuracy stacked over one step axis, in type large
    enough to read on a phone, where the figure is drawn a third of its width."""
    steps = [r for r in log if r.get("loss") is not None]
    vals = [r for r in log if "val_accuracy" in r]
    plt = _pyplot()
    with plt.rc_context({"font.size": 13}):
        fig, axes = plt.subplots(3, 1, figsize=(6.4, 7.6), sharex=True)
        axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], marker=".")
        axes[0].set(title="training loss (cross-entropy over label tokens)")
        axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps], color="tab:orange")
        axes[1].set(title="learning rate")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        plot_validation(axes[2], vals)
        axes[2].set(xlabel="optimizer step")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(fig, Path(path))


def plot_validation(ax, vals: list[dict]) -> None:
    """Validation accuracy on an axis scaled to its values (a few points on 0..1 show no change),
    each point labelled with its value when there are few."""
    acc = [r["val_accuracy"] for r in vals]
    ax.set(title="validation accuracy")
    if not vals:
        ax.text(0.5, 0.5, "no validation sample\n(data.val_size = 0)", ha="center", va="center",
                transform=ax.transAxes)
        return
    ax.plot([r["step"] for r in vals], acc, marker="o", color="tab:green")
    pad = max(0.02, (max(acc) - min(acc)) * 0.25)
    ax.set_ylim(max(0.0, min(acc) - pad), min(1.0, max(acc) + pad))
    if len(vals) <= 12:
        for r in vals:
            ax.annotate(f"{r['val_accuracy']:.3f}", (r["step"], r["val_accuracy"]), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=11)


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: str | Path, title: str = "") -> None:
    """Counts and row-normalised shares (the recall of each actual class), coloured by share, so
    unbalanced classes stay readable; it grows with the number of classes."""
    m = np.asarray(matrix, dtype=float)
    shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k = len(labels)
    size = max(4.2, 1.0 + 0.9 * k)
    plt = _pyplot()
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
    plt = _pyplot()
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
