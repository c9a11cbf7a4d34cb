"""Figures: one seaborn style, saved to figures/<profile>/ at 150 dpi and shown inline."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .atomic import atomic_path
from .health import is_evidence

DPI = 150


def setup_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook")


def save_fig(fig: plt.Figure, name: str, figure_dir: str | Path) -> Path:
    """Save `fig` as figure_dir/name.png (150 dpi) atomically and return the path."""
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


def loss_curves(history, initial_val: dict[str, float] | None = None, smooth: int = 5) -> plt.Figure:
    """Training loss (rolling mean over `smooth` steps) and validation loss per run, the latter
    from the initial validation loss (step 0) through every validation check.

    history: long DataFrame with columns run, step, lm_loss, val_loss; initial_val: run -> loss
    before the first step. The legend sits outside the axes.
    """
    history = history.copy()
    history["train (rolling mean)"] = history.groupby("run").lm_loss.transform(lambda s: s.rolling(smooth, min_periods=1).mean())
    val = history.dropna(subset=["val_loss"])[["run", "step", "val_loss"]]
    if initial_val:
        val = pd.concat([pd.DataFrame({"run": list(initial_val), "step": 0, "val_loss": list(initial_val.values())}), val])
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 3.8))
    sns.lineplot(data=history, x="step", y="train (rolling mean)", hue="run", ax=axes[0], legend=False, lw=1)
    sns.lineplot(data=val.sort_values(["run", "step"]), x="step", y="val_loss", hue="run", marker="o", ax=axes[1])
    axes[0].set(xlabel="optimizer step", ylabel="cross-entropy (nats per token)", title="training loss")
    axes[1].set(xlabel="optimizer step", ylabel="cross-entropy (nats per token)", title="validation loss (step 0 = before training)")
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title="run")
    fig.tight_layout()
    return fig


def tradeoff(table) -> plt.Figure:
    """Alignment and fluency as the IRM's scale alpha grows, every alpha of the sweep on the x axis:
    the mean judge probability of the target emotion (left) and the median perplexity under the
    base host (right, log scale). An alpha at which no generation had two words has no score: it
    is drawn as an x at 0 on the left and at 1 (the least perplexity) on the right, and named in
    the right panel's legend, never dropped.

    table: one row per (emotion, alpha) with p_target, median_perplexity and scored (studies.generations.alpha_table).
    """
    table = table.reset_index()
    alphas = sorted(table.alpha.unique())
    positions = {alpha: i for i, alpha in enumerate(alphas)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    palette = dict(zip(table.emotion.unique(), sns.color_palette(n_colors=table.emotion.nunique())))
    for emotion, group in table.groupby("emotion", sort=False):
        x = group.alpha.map(positions).to_numpy()
        for ax, column in zip(axes, ("p_target", "median_perplexity")):
            y = group[column].to_numpy(dtype=float)
            ax.plot(x, y, marker="o", color=palette[emotion], label=emotion)
            empty = np.isnan(y)
            if empty.any():
                ax.scatter(x[empty], np.zeros(empty.sum()) if column == "p_target" else np.ones(empty.sum()),
                           marker="x", color=palette[emotion], s=50, clip_on=False,
                           label=f"{emotion}: no scored text at alpha " + ", ".join(f"{a:g}" for a in group.alpha[empty]))
    for ax in axes:
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("alpha (scale of the IRM's output; 0 = base host)")
    axes[0].set(ylabel="mean judge probability of the target (0-1)", ylim=(0, 1), title="Alignment")
    axes[1].set(ylabel="median perplexity under the base host", yscale="log", title="Fluency (lower is more fluent)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title="emotion")
    fig.tight_layout()
    return fig


def alignment_bars(summary) -> plt.Figure:
    """Target-emotion probability, base vs IRM, per emotion (and recipe, where the summary has a
    `recipe` column with several), with 95% intervals (greedy)."""
    greedy = summary[summary["mode"] == "greedy"]
    several = "recipe" in greedy and greedy.recipe.nunique() > 1
    fig, ax = plt.subplots(figsize=(7 + 2 * several, 3.8))
    x = np.arange(len(greedy))
    for offset, who, color in ((-0.2, "base", "#999999"), (0.2, "irm", "#c0392b")):
        mean = greedy[f"p_target_{who}"].to_numpy()
        err = np.vstack([mean - greedy[f"p_target_{who}_low"].to_numpy(), greedy[f"p_target_{who}_high"].to_numpy() - mean])
        ax.bar(x + offset, mean, width=0.4, yerr=err, capsize=3, color=color, label="base host" if who == "base" else "with IRM")
    ax.set_xticks(x, [f"{r.emotion}\n({r.recipe})" for r in greedy.itertuples()] if several else greedy.emotion)
    ax.set(xlabel="target emotion (recipe)" if several else "target emotion", ylabel="judge probability of the target (0-1)", ylim=(0, 1), title="Alignment, greedy generations")
    ax.legend()
    return fig


def striation_heatmaps(matrices: dict, dominant: dict, signed: bool = False, zoom: int = 16, shared_scale: bool = True) -> plt.Figure:
    """The paper's figure, layer (rows) x hidden index (columns), one row of panels per run: the
    whole matrix, with the dominant index marked by a triangle above its column (not drawn over
    it), and a zoom on the `zoom` columns of largest mean |value| over layers, labelled.

    matrices: name -> [layers, hidden]; signed: the paper's signed mean on a diverging scale
    centred at 0, else mean |output|. shared_scale: every panel on one colour scale (runs compared
    by size); else each row on its own (the pattern of a run whose outputs are much smaller stays
    visible), with its own colour bar. A scale ends at the 99.9th percentile of |value|.
    """
    names = list(matrices)
    scales = {name: float(np.percentile(np.abs(m), 99.9)) or 1.0 for name, m in matrices.items()}
    if shared_scale:
        scales = dict.fromkeys(names, max(scales.values()))
    label = "mean IRM output (signed)" if signed else "mean |IRM output|"
    fig, axes = plt.subplots(len(names), 2, figsize=(13, 2.6 * len(names)), squeeze=False, gridspec_kw={"width_ratios": [3, 1]})
    images = []
    for (ax, ax_zoom), name in zip(axes, names):
        scale, matrix = scales[name], np.asarray(matrices[name])
        style = {"cmap": "RdBu_r", "vmin": -scale, "vmax": scale} if signed else {"cmap": "magma", "vmin": 0, "vmax": scale}
        images.append(ax.imshow(matrix, aspect="auto", interpolation="nearest", **style))
        ax.grid(False)  # the theme's grid would draw white lines across the matrix
        ax.plot([dominant[name]], [1.04], marker="v", color="#2ca02c", markersize=8, clip_on=False,
                transform=ax.get_xaxis_transform())
        ax.set_title(f"{name} (dominant index {dominant[name]}, marked above)", pad=12)
        ax.set(xlabel="hidden index", ylabel="injected layer")
        top = np.argsort(-np.abs(matrix).mean(0), kind="stable")[:zoom]
        ax_zoom.imshow(matrix[:, top], aspect="auto", interpolation="nearest", **style)
        ax_zoom.grid(False)
        ax_zoom.set_xticks(range(len(top)), [str(i) for i in top], rotation=90, fontsize=7)
        ax_zoom.set(title=f"top {len(top)} indices", xlabel="hidden index", ylabel="injected layer")
    fig.tight_layout()
    if shared_scale:
        fig.colorbar(images[-1], ax=axes.ravel().tolist(), label=label, shrink=0.8)
    else:
        for image, row in zip(images, axes):
            fig.colorbar(image, ax=row.tolist(), label=label, pad=0.01)
    return fig


CURVE_METRICS = [("index_share", "index share of variance (0-1)", (0, 1)), ("layer_share", "layer share of variance (0-1)", (0, 1)),
                 ("vertical_continuity", "vertical continuity (share of layers)", (0, 1)),
                 ("yardstick", "yardstick: next-token loss (nats)", None),
                 ("output_rms_ratio", "IRM output RMS / host residual RMS", None)]


def metric_curves(tracking, host_yardstick: float | None = None) -> plt.Figure:
    """Striation and health metrics against training step, one line per run: the colour names the
    run, the line style its arm. With a `flag` column (irmlib.health), runs flagged unstable or
    host-damaged get a row of their own, apart from the runs that count. `host_yardstick` (nats)
    is drawn as a line on the yardstick panel; the output ratio is on a log scale.

    tracking: long DataFrame with columns step, run, arm, index_share, layer_share,
    vertical_continuity and, where measured, yardstick, output_rms_ratio and flag.
    """
    metrics = [m for m in CURVE_METRICS if m[0] in tracking and tracking[m[0]].notna().any()]
    flagged = ~tracking["flag"].map(is_evidence) if "flag" in tracking else pd.Series(False, index=tracking.index)
    groups = [(label, part) for label, part in (("runs that count", tracking[~flagged]), ("flagged runs, not pooled", tracking[flagged]))
              if len(part)]
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(4 * len(metrics), 3.6 * len(groups)), sharex=True, squeeze=False)
    for row, (group, part) in zip(axes, groups):
        for ax, (column, label, limits) in zip(row, metrics):
            sns.lineplot(data=part, x="step", y=column, hue="run", style="arm", units="run", estimator=None, ax=ax, lw=1.2,
                         legend=ax is row[-1])
            ax.set(xlabel="training step", ylabel=label, title=group if column == metrics[0][0] else "")
            if limits:
                ax.set_ylim(*limits)
            if column == "output_rms_ratio":
                ax.set_yscale("log")
            if column == "yardstick" and host_yardstick is not None:
                ax.axhline(host_yardstick, color="black", ls=":", lw=1, label="host")
        sns.move_legend(row[-1], "upper left", bbox_to_anchor=(1.02, 1), title="run, arm", fontsize=7)
    fig.tight_layout()
    return fig


def correlation_matrix(corr, title: str) -> plt.Figure:
    """A run-by-run correlation matrix (Spearman), annotated."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(corr), 0.6 + 0.65 * len(corr)))
    sns.heatmap(corr, vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", annot_kws={"fontsize": 7}, ax=ax,
                cbar_kws={"label": "Spearman correlation"})
    ax.set(title=title, xlabel="run", ylabel="run")
    return fig


def importance_scatter(table, x: str, y: str, label_indices: list[int], xlabel: str, ylabel: str, title: str) -> plt.Figure:
    """Per hidden index, one property against another (log-log), chosen indices labelled."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sns.scatterplot(data=table, x=x, y=y, s=10, alpha=0.5, ax=ax, edgecolor=None)
    for index in label_indices:
        ax.annotate(str(index), (table.loc[index, x], table.loc[index, y]), color="#c0392b", fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
        ax.scatter([table.loc[index, x]], [table.loc[index, y]], color="#c0392b", s=25)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    return fig


def logit_spread_plot(spread, marked) -> plt.Figure:
    """Histogram of every index's logit spread, with the marked indices as dashed lines named in
    the legend (labels on the lines would overlap where spreads are close).

    spread: [hidden]; marked: rows with `index`, `role` ("random" drawn blue, others red), `logit_spread`.
    """
    fig, ax = plt.subplots(figsize=(8, 3.8))
    sns.histplot(spread, bins=60, ax=ax, color="#999999")
    for row in marked.itertuples():
        ax.axvline(row.logit_spread, color="#2980b9" if row.role == "random" else "#c0392b", ls="--", lw=1,
                   label=f"{row.index} ({row.role})")
    ax.set(xlabel="std over the vocabulary of the index's logit direction (logits per unit)", ylabel="hidden indices (count)",
           title="How strongly each index moves the logits")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), title="index", fontsize=8)
    return fig


def nudge_kl_plot(kl) -> plt.Figure:
    """Next-token KL against nudge size, one line per probed index. kl: rows with size, kl, probe."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    sns.lineplot(data=kl, x="size", y="kl", hue="probe", marker="o", ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="nudge size (x RMS of the final hidden state)", ylabel="next-token KL (nats)",
           title="Next-token change when nudging one index")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title="index nudged")
    return fig


def ablation_bars(ablation) -> plt.Figure:
    """Target-emotion probability per emotion and masking condition, bars with 95% intervals.
    ablation: rows with emotion, condition, p_target."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    sns.barplot(data=ablation, x="emotion", y="p_target", hue="condition", errorbar=("ci", 95), ax=ax)
    ax.set(xlabel="target emotion", ylabel="judge probability of the target (0-1)", ylim=(0, 1),
           title="Masking the dominant index at inference (bars: 95% intervals)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title="condition")
    return fig


# irmlib.health.flag_label's labels: a filled circle for a cell that counts, crosses for the flags.
FLAG_MARKERS = {"ok": "o", "host damaged": "X", "unstable": "P", "unstable, host damaged": "D"}


def regime_scatter(table) -> plt.Figure:
    """Notebook 07's map in two panels: each cell's index share against its yardstick's rise
    (end minus the host's, nats) and against its peak output RMS ratio (log scale); the colour is
    the arm, the marker the cell's flags (FLAG_MARKERS), and each point is labelled with its rate and
    schedule. table: one row per cell with arm, lr, schedule, flag, index_share, yardstick_rise,
    peak_output_rms_ratio."""
    data = table.reset_index()
    panels = [("yardstick_rise", "yardstick rise: end - host (nats)"), ("peak_output_rms_ratio", "peak IRM output RMS / host residual RMS")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (column, label) in zip(axes, panels):
        sns.scatterplot(data=data, x=column, y="index_share", hue="arm", style="flag", style_order=list(FLAG_MARKERS),
                        markers=FLAG_MARKERS, s=70, ax=ax, legend=ax is axes[-1])
        for _, row in data.iterrows():
            ax.annotate(f"{row.lr:.0e} {row.schedule}", (row[column], row.index_share), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set(xlabel=label, ylabel="index share of variance (0-1)", ylim=(0, 1))
        if column == "peak_output_rms_ratio":
            ax.set_xscale("log")
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig
