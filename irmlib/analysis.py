"""Vertical striations: which hidden indices dominate the IRM output, and whether the host explains them.

An IRM output matrix is `[layers, hidden]` (mean |value| per layer and hidden index). Striations
are columns that stay large in nearly every layer. The functions here measure them, compare them
across runs, build a chance baseline, and line them up with properties of the host itself
(massive activations, final-norm weights, unembedding column norms, mean-difference steering).
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from .host import Host


def magnitude_matrix(irm_outputs: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
    """Mean |value| over all tokens of all sequences: `[tokens, layers, hidden]` (or a list) -> `[layers, hidden]`."""
    if isinstance(irm_outputs, torch.Tensor):
        irm_outputs = [irm_outputs]
    total = sum(torch.as_tensor(x).detach().cpu().double().abs().sum(0) for x in irm_outputs)
    n_tokens = sum(len(x) for x in irm_outputs)
    return (total / n_tokens).numpy()


def signed_matrix(irm_outputs: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
    """Signed mean over all tokens of all sequences (the paper's heatmaps, `tensor_logger.py`):
    `[tokens, layers, hidden]` (or a list) -> `[layers, hidden]`."""
    if isinstance(irm_outputs, torch.Tensor):
        irm_outputs = [irm_outputs]
    total = sum(torch.as_tensor(x).detach().cpu().double().sum(0) for x in irm_outputs)
    n_tokens = sum(len(x) for x in irm_outputs)
    return (total / n_tokens).numpy()


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


def shared_dominant_index(matrices: dict[str, np.ndarray]) -> int:
    """The dominant index across runs: the most frequent per-run dominant index of `[layers, hidden]`
    magnitude matrices, ties broken by the larger importance summed over runs."""
    if not matrices:
        raise ValueError("shared_dominant_index needs at least one run")
    dominants = [dominant_index(m) for m in matrices.values()]
    summed = sum(index_importance(m) for m in matrices.values())
    return int(max(set(dominants), key=lambda i: (dominants.count(i), summed[i])))


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


def _encode(host: Host, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = host.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length, padding_side="right")
    return batch["input_ids"], batch["attention_mask"]


def host_hidden_states(host: Host, texts: Sequence[str] | None = None, input_ids: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, max_length: int = 64) -> torch.Tensor:
    """Residual stream after each decoder layer at every real token: `[tokens, layers, hidden]` (fp32, CPU).

    Give either `texts` (tokenised with `host.tokenizer`, right padding) or `input_ids` `[batch, seq]`
    with an optional `attention_mask` `[batch, seq]`.
    """
    if texts is not None:
        input_ids, attention_mask = _encode(host, texts, max_length)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # HF's last hidden state has already been through the final norm; take the raw one from the layer.
    last = {}
    hook = host.layers[-1].register_forward_hook(
        lambda module, args, output: last.update(h=output[0] if isinstance(output, tuple) else output))
    try:
        with torch.inference_mode():
            out = host.model(input_ids=input_ids.to(host.device), attention_mask=attention_mask.to(host.device),
                             output_hidden_states=True)
    finally:
        hook.remove()
    states = torch.stack([*out.hidden_states[1:-1], last["h"]], dim=2)  # [batch, seq, layers, hidden]
    return states[attention_mask.to(host.device).bool()].float().cpu()


def massive_activation_ratio(hidden_states: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per layer, max over tokens of |h| at each index over the median |h| of that layer: `[tokens, layers, hidden]` -> `[layers, hidden]`."""
    h = np.abs(np.asarray(hidden_states, dtype=np.float64))
    median = np.median(h.transpose(1, 0, 2).reshape(h.shape[1], -1), axis=1)
    return h.max(0) / median[:, None]


def host_index_table(host: Host, hidden_states: torch.Tensor | np.ndarray) -> pd.DataFrame:
    """Per hidden index: largest massive-activation ratio over layers, |final-norm weight|, L2 norm of the lm_head column."""
    return pd.DataFrame({
        "massive_ratio_max": massive_activation_ratio(hidden_states).max(0),
        "final_norm_weight": host.final_norm.weight.detach().abs().double().cpu().numpy(),
        "lm_head_column_norm": host.lm_head.weight.detach().double().norm(dim=0).cpu().numpy(),
    }).rename_axis("index")


def _states(host: Host, inputs, max_length: int) -> torch.Tensor:
    if isinstance(inputs, tuple):
        return host_hidden_states(host, input_ids=inputs[0], attention_mask=inputs[1])
    return host_hidden_states(host, texts=inputs, max_length=max_length)


def mean_difference_steering(host: Host, emotion_texts, neutral_texts, max_length: int = 64) -> np.ndarray:
    """Mean residual stream over all emotion tokens minus that over all neutral tokens: `[layers, hidden]`.

    Each of `emotion_texts` and `neutral_texts` is a list of strings or a pre-tokenised
    `(input_ids, attention_mask)` pair.
    """
    emotion = _states(host, emotion_texts, max_length).double().mean(0)
    neutral = _states(host, neutral_texts, max_length).double().mean(0)
    return (emotion - neutral).numpy()


def caa_steering(host: Host, pairs: Sequence[tuple[str, str]], read_token_index: int = -1, batch_size: int = 8) -> np.ndarray:
    """Contrastive activation addition, computed by the `steering-vectors` package: per layer, the
    mean over paired texts of the block output at one token (the last by default) of the emotion
    text minus that of its neutral pair: `[layers, hidden]`.

    pairs: (emotion text, neutral text) of the same question. Reading one token, not a mean over
    all of them, keeps the first token (where massive activations sit) and text length out.
    """
    from steering_vectors import train_steering_vector

    vector = train_steering_vector(host.model, host.tokenizer, list(pairs), layers=list(range(host.n_layers)),
                                   read_token_index=read_token_index, batch_size=batch_size, show_progress=False)
    return torch.stack([vector.layer_activations[i].float().cpu() for i in range(host.n_layers)]).double().numpy()


def striation_metrics(matrix: np.ndarray, k: int = 5) -> dict:
    """The paper's observation in numbers for one `[layers, hidden]` matrix: variance shares,
    the dominant index, the top-k indices, and the dominant index's vertical continuity."""
    dominant = dominant_index(matrix)
    return {**variance_shares(matrix), "dominant_index": dominant, f"top{k}": top_k_indices(matrix, k),
            "vertical_continuity": vertical_continuity(matrix, dominant, k)}


def steering_comparison(host: Host, rows: list[dict], profile, importances: dict[str, np.ndarray],
                        dominant: dict[str, int], pairs_per_emotion: int | None = None) -> pd.DataFrame:
    """Notebook 04's baseline: steering vectors of each emotion but neutral, read from its training
    texts against the neutral rewrite of the same question, at the last token (CAA) and as the mean
    over all tokens, beside the IRM of the emotion's first seed.

    importances, dominant: per run name (runs.run_name), the IRM's per-index importance `[hidden]`
    and dominant index. pairs_per_emotion: training rows read per emotion (default 2 x the
    profile's n_eval_prompts). One row per "<emotion>, <reading>": the vector's striation metrics,
    its Spearman correlation with the IRM's importance, the rank in it of the IRM's dominant index,
    and the number of pairs.
    """
    from .data import as_datasets
    from .runs import run_name

    limit = pairs_per_emotion or 2 * profile.n_eval_prompts
    train_rows = {e: as_datasets(rows, e, limit=limit)["train"] for e in profile.emotions}
    neutral_by_question = {r["question"]: r["text"] for r in train_rows.get("neutral", [])}
    table = {}
    for emotion in profile.emotions:
        pairs = [(r["text"], neutral_by_question[r["question"]]) for r in train_rows[emotion] if r["question"] in neutral_by_question]
        if emotion == "neutral" or not pairs:
            continue
        run = run_name(emotion, profile.seeds[0])
        readings = {"last token (CAA)": np.abs(caa_steering(host, pairs)),
                    "all tokens": np.abs(mean_difference_steering(host, [p[0] for p in pairs], [p[1] for p in pairs]))}
        for reading, vector in readings.items():
            table[f"{emotion}, {reading}"] = striation_metrics(vector) | {
                "spearman_with_irm": float(pd.Series(index_importance(vector)).corr(pd.Series(importances[run]), method="spearman")),
                "rank_of_irm_dominant": rank_of(index_importance(vector), dominant[run]),
                "pairs": len(pairs),
            }
    return pd.DataFrame(table).T
