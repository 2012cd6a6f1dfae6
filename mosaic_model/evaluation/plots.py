"""Figures of the evaluations (matplotlib on its file-only Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (GPU machines and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(curves: dict, xlabel: str, ylabel: str, title: str, path: Path, logy: bool = False,
               vline: float | None = None) -> None:
    """One line per ``{label: y values}`` against their index, saved to ``path`` (a dashed vertical line
    at ``vline``, labelled as the training length)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, ys in curves.items():
        ax.plot(np.arange(len(ys)), ys, label=label, lw=1.3)
    if vline is not None:
        ax.axvline(vline, color="grey", ls="--", lw=1, label="training length")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention(att: np.ndarray, title: str, path: Path) -> None:
    """Heat map of a (layers, heads, keys) attention array, one row per (layer, head), saved to ``path``."""
    plt = pyplot()
    L, H, n = att.shape
    fig, ax = plt.subplots(figsize=(8, 0.35 * L * H + 1.4))
    im = ax.imshow(att.reshape(L * H, n), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(L * H), [f"L{l} H{h}" for l in range(L) for h in range(H)], fontsize=6)
    ax.set(xlabel="key position", title=title)
    fig.colorbar(im, ax=ax, label="attention weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
