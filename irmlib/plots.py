"""Figures: one seaborn style, saved to figures/<profile>/ at 150 dpi and shown inline."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

DPI = 150


def setup_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook")


def save_fig(fig: plt.Figure, name: str, figure_dir: str | Path) -> Path:
    """Save `fig` as figure_dir/name.png (150 dpi) atomically and return the path."""
    from .files import atomic_path

    path = Path(figure_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    return path


def length_distributions(lengths, hue: str, x: str = "words", title: str = "") -> plt.Figure:
    """Histogram of text lengths (in words) per group; `lengths` is a long-format DataFrame."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(data=lengths, x=x, hue=hue, element="step", stat="count", common_norm=False, binwidth=2, ax=ax)
    ax.set_xlabel("length (words)")
    ax.set_ylabel("texts (count)")
    ax.set_title(title)
    return fig
