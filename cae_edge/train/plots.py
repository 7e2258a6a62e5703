"""PNG figures of a training run: loss curve and originals vs reconstructions.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import psnr_per_image


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_loss(history: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Plot ``loss`` (and ``val_loss`` when present) per epoch on a log scale; write a PNG to ``path``."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    for key, style in (("loss", "-o"), ("val_loss", "--s")):
        values = history.get(key) or []
        if values:
            ax.plot(range(1, len(values) + 1), values, style, markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (0-1 pixels)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def pick_examples(labels: np.ndarray, per_class: int = 1, classes: int = 10) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class (fewer when a class is short)."""
    labels = np.asarray(labels)
    picks = [np.flatnonzero(labels == k)[:per_class] for k in range(classes)]
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)


def plot_recon(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Grid with originals on the top row and reconstructions below, PSNR under each; write a PNG.

    Args:
        originals: uint8 images (N, 28, 28).
        reconstructions: uint8 images (N, 28, 28), same order.
        path: where to write the PNG.
        title: figure title.
    """
    originals = np.asarray(originals)
    reconstructions = np.asarray(reconstructions)
    n = len(originals)
    psnr = psnr_per_image(originals, reconstructions)
    fig = _figure(max(1.2 * n, 4), 3)
    for i in range(n):
        for row, img in enumerate((originals[i], reconstructions[i])):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel("original" if row == 0 else "decoded", fontsize=8)
            if row == 1:
                ax.set_xlabel(f"{psnr[i]:.1f} dB", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
