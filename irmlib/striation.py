"""Vertical striations in numbers: which hidden indices dominate an IRM's output, and how alike runs are.

An IRM output matrix is `[layers, hidden]` (mean |value| per layer and hidden index). Striations
are columns that stay large in nearly every layer. The functions here measure them, compare them
across runs and build a chance baseline; `StriationTracker` measures them during training.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from .irm import IRM

def _token_mean(irm_outputs: torch.Tensor | Sequence[torch.Tensor], magnitude: bool) -> np.ndarray:
    """Mean over all tokens of all sequences, of |value| with `magnitude`, else of the signed value:
    `[tokens, layers, hidden]` (or a list) -> `[layers, hidden]`."""
    if isinstance(irm_outputs, torch.Tensor):
        irm_outputs = [irm_outputs]
    values = (torch.as_tensor(x).detach().cpu().double() for x in irm_outputs)
    total = sum((x.abs() if magnitude else x).sum(0) for x in values)
    n_tokens = sum(len(x) for x in irm_outputs)
    return (total / n_tokens).numpy()


def magnitude_matrix(irm_outputs: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
    """Mean |value| over all tokens of all sequences: `[tokens, layers, hidden]` (or a list) -> `[layers, hidden]`."""
    return _token_mean(irm_outputs, magnitude=True)


def signed_matrix(irm_outputs: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
    """Signed mean over all tokens of all sequences (the paper's heatmaps, `tensor_logger.py`):
    `[tokens, layers, hidden]` (or a list) -> `[layers, hidden]`."""
    return _token_mean(irm_outputs, magnitude=False)


def variance_shares(matrix: np.ndarray) -> dict[str, float]:
    """Shares of the total sum of squares of a `[layers, hidden]` matrix explained by its column and row means.

    Striations show as `index_share` >> `layer_share`; the two never sum to more than 1.
    """
    m = np.asarray(matrix, dtype=np.float64)
    grand = m.mean()
    total = ((m - grand) ** 2).sum()
    if total == 0:
        return {"index_share": 0.0, "layer_share": 0.0}
    n_layers, n_hidden = m.shape
    index_ss = n_layers * ((m.mean(0) - grand) ** 2).sum()
    layer_ss = n_hidden * ((m.mean(1) - grand) ** 2).sum()
    return {"index_share": float(index_ss / total), "layer_share": float(layer_ss / total)}


def index_importance(matrix: np.ndarray) -> np.ndarray:
    """Mean over layers of a `[layers, hidden]` matrix -> `[hidden]`."""
    return np.asarray(matrix, dtype=np.float64).mean(0)


def dominant_index(matrix: np.ndarray) -> int:
    """The hidden index of greatest importance (mean over layers)."""
    return int(np.argmax(index_importance(matrix)))


def pooled_importance(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Importance pooled over runs, each run's `[hidden]` importance divided by its own sum first,
    so every run counts alike (a run with huge outputs would otherwise decide alone): `[hidden]`."""
    if not len(matrices):
        raise ValueError("pooled_importance needs at least one run")
    return np.mean([index_importance(m) / max(index_importance(m).sum(), 1e-300) for m in matrices], axis=0)


def shared_dominant_index(matrices: dict[str, np.ndarray]) -> int | None:
    """The dominant index the runs share: of `[layers, hidden]` magnitude matrices, the most
    frequent per-run dominant index, ties broken by the larger pooled importance
    (`pooled_importance`). Among several runs it must dominate at least two, else there is no
    shared index and the answer is None; a single run's is its own dominant index."""
    if not matrices:
        raise ValueError("shared_dominant_index needs at least one run")
    dominants = [dominant_index(m) for m in matrices.values()]
    pooled = pooled_importance(list(matrices.values()))
    best = max(set(dominants), key=lambda i: (dominants.count(i), pooled[i]))
    return best if len(dominants) == 1 or dominants.count(best) >= 2 else None


def is_striated(metrics: dict, ratio: float) -> bool:
    """Whether a run's striation metrics show a striation: its index share at least `ratio` times
    its layer share (the profile's analysis.striated_share_ratio), and above 0: an output with no
    variance (all zero, say) has shares of 0 and 0, and no striation."""
    return bool(metrics["index_share"] > 0 and metrics["index_share"] >= ratio * metrics["layer_share"])


def top_k_indices(matrix: np.ndarray, k: int) -> list[int]:
    """The k hidden indices of greatest importance, most important first."""
    return [int(i) for i in np.argsort(-index_importance(matrix), kind="stable")[:k]]


def rank_of(values: np.ndarray, index: int) -> int:
    """Rank of `values[index]` in a 1-D array, 1 = largest; ties share the better rank."""
    values = np.asarray(values)
    return int((values > values[index]).sum()) + 1


def vertical_continuity(matrix: np.ndarray, index: int, k: int = 5) -> float:
    """Fraction of layers (rows of `[layers, hidden]`) in which `index` is among that layer's top k."""
    return float(np.mean([rank_of(row, index) <= k for row in np.asarray(matrix)]))


def importance_correlations(importances: dict[str, np.ndarray]) -> pd.DataFrame:
    """Spearman correlation of every pair of `[hidden]` importance vectors, as a square run-by-run DataFrame."""
    names = list(importances)
    corr = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a, b in combinations(names, 2):
        corr.loc[a, b] = corr.loc[b, a] = spearmanr(importances[a], importances[b]).statistic
    return corr


def top_k_agreement(importances: dict[str, np.ndarray], k: int) -> float:
    """Mean over pairs of runs of |top-k(a) & top-k(b)| / k (k=1: fraction of pairs sharing the dominant index)."""
    if len(importances) < 2:
        raise ValueError("top_k_agreement needs at least two runs")
    tops = [set(np.argsort(-np.asarray(v), kind="stable")[:k].tolist()) for v in importances.values()]
    return float(np.mean([len(a & b) / k for a, b in combinations(tops, 2)]))


def shuffled_control(matrix: np.ndarray, seed: int = 0) -> np.ndarray:
    """Permute the hidden indices of each layer (row) of `[layers, hidden]` independently.

    Each layer keeps its distribution but alignment across layers is destroyed: what chance looks like.
    """
    return np.random.default_rng(seed).permuted(np.asarray(matrix), axis=1)


def striation_metrics(matrix: np.ndarray, k: int = 5) -> dict:
    """The paper's observation in numbers for one `[layers, hidden]` matrix: variance shares,
    the dominant index, the top-k indices, and the dominant index's vertical continuity."""
    dominant = dominant_index(matrix)
    return {**variance_shares(matrix), "dominant_index": dominant, f"top{k}": top_k_indices(matrix, k),
            "vertical_continuity": vertical_continuity(matrix, dominant, k)}


def output_rms_ratio(irm_outputs: torch.Tensor, not_first: torch.Tensor, host_rms: np.ndarray,
                     injected_layers: tuple[int, ...]) -> np.ndarray:
    """Per injected layer, the RMS of the IRM's output over the host's residual RMS after that
    layer, without each text's first token: irm_outputs [real tokens, injected_layers, hidden],
    not_first [real tokens], host_rms [layers] -> [injected_layers]."""
    kept = irm_outputs[not_first.to(irm_outputs.device)].double()
    rms = kept.pow(2).mean(dim=(0, 2)).sqrt().cpu().numpy()
    return rms / np.asarray(host_rms, dtype=np.float64)[list(injected_layers)]


class StriationTracker:
    """Striation metrics of an IRM on fixed probe inputs ([tokens, hidden], from `irm_inputs`):
    called with the IRM during training, returns index_share, layer_share, dominant_index,
    vertical_continuity, the top k, the mean |output| and, given `not_first` ([tokens] bool) and
    the host's residual RMS per layer (`host_rms`, [layers]), the output's RMS over the host's
    (`output_rms_ratio`, mean over injected layers, and its largest, `output_rms_ratio_max`)."""

    def __init__(self, inputs: torch.Tensor, k: int = 5, not_first: torch.Tensor | None = None, host_rms: np.ndarray | None = None):
        self.inputs, self.k, self.not_first, self.host_rms = inputs, k, not_first, host_rms

    @torch.inference_mode()
    def outputs(self, irm: IRM) -> torch.Tensor:
        """The IRM's output on the probe inputs: [tokens, injected_layers, hidden] (float32, CPU)."""
        param = next(irm.parameters())
        return irm(self.inputs.to(param.device, param.dtype)).float().cpu()

    def __call__(self, irm: IRM) -> dict:
        outputs = self.outputs(irm)
        metrics = striation_metrics(magnitude_matrix(outputs), self.k)
        top = metrics.pop(f"top{self.k}")
        row = {**metrics, f"top{self.k}": " ".join(map(str, top)), "mean_abs": float(outputs.abs().mean())}
        if self.host_rms is not None:
            ratio = output_rms_ratio(outputs, self.not_first, self.host_rms, irm.config.injected_layers)
            row.update(output_rms_ratio=float(ratio.mean()), output_rms_ratio_max=float(ratio.max()))
        return row
