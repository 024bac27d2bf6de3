"""Evaluation figures people would rather look at than read: ROC and PR curves per class,
confusion counts, and example slices with their scores. Matplotlib only, Agg backend."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, precision_recall_curve, roc_curve  # noqa: E402

from hemo_model import CLASSES  # noqa: E402


def roc_figure(labels: np.ndarray, probs: np.ndarray, title: str) -> Any:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, name in enumerate(CLASSES):
        if 0 < labels[:, i].sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels[:, i], probs[:, i])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def pr_figure(labels: np.ndarray, probs: np.ndarray, title: str) -> Any:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, name in enumerate(CLASSES):
        if labels[:, i].sum() > 0:
            precision, recall, _ = precision_recall_curve(labels[:, i], probs[:, i])
            ax.plot(recall, precision, label=f"{name} (prevalence {labels[:, i].mean():.3f})")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def confusion_figure(counts: dict[str, dict[str, int]], title: str) -> Any:
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(2.6 * len(CLASSES), 2.8))
    for ax, name in zip(axes, CLASSES):
        c = counts[name]
        grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (r, col), value in np.ndenumerate(grid):
            ax.text(col, r, str(value), ha="center", va="center", color="black", fontsize=11)
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def examples_figure(images: list[np.ndarray], captions: list[str], title: str) -> Any:
    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def saliency_overlay_figure(pixels: np.ndarray, saliency: np.ndarray, title: str) -> Any:
    """A slice with its saliency map over it and the map's peak marked: where the answer rests."""
    fig, ax = plt.subplots(figsize=(4, 4.3))
    ax.imshow(pixels, cmap="gray")
    ax.imshow(np.ma.masked_less(saliency, 0.05), cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    ax.plot(x, y, "w+", markersize=12)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.text(0.5, 0.01, "derived image, not for diagnosis", ha="center", fontsize=7)
    return fig
