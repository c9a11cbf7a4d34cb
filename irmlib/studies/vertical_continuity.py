"""Notebook 04's study: is one hidden index large in every layer, in every run, and is it the
host's own massive-activation dimension? Captures of every run and an untrained control, the
striation table with shuffled controls, consistency across runs, where each run's dominant
index stands in the host (one ranking convention, irmlib.residual.RANK_ORDER), a steering-vector
baseline, and the notebook's claims."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from accelerate.utils import set_seed
from steering_vectors import train_steering_vector

from ..claims import NOT_TESTED, Claim, fmt, plural, verdict
from ..data import as_datasets
from ..generate import CapturedOutputs, capture_irm_outputs
from ..health import is_evidence
from ..host import Host
from ..irm import IRM, IRMConfig
from ..residual import host_hidden_states, host_ranks
from ..runs import capture_path, run_name
from ..striation import (dominant_index, importance_correlations, index_importance, rank_of, shared_dominant_index, shuffled_control,
                         striation_metrics, top_k_agreement)


def untrained_control(host: Host, profile) -> IRM:
    """The trained runs' own starting IRM (same init, the first seed), the control every heatmap
    ends with. A zero-init IRM outputs nothing, so zero-init runs get the paper's N(0, 0.02) init."""
    set_seed(profile.seeds[0])
    init = "paper" if profile.irm.get("init", "zero") == "zero" else profile.irm["init"]
    return IRM(IRMConfig.for_host(host, **{**profile.irm, "init": init}))


def capture_runs(host: Host, irms: dict[str, IRM], questions: list[str], profile) -> tuple[dict[str, CapturedOutputs], dict]:
    """Capture every IRM's outputs on `questions` (prompt tokens and the first
    analysis.capture_new_tokens greedy tokens) and save each to runs/<profile>/captures/. Returns
    the captures by name and {"tokens", "bytes_per_token"} of what was written."""
    captures, size, tokens = {}, 0, 0
    for name, irm in irms.items():
        captures[name] = capture_irm_outputs(host, irm, questions, profile.prompt_format, new_tokens=profile.analysis.capture_new_tokens)
        size += captures[name].save(capture_path(profile, name))
        tokens += sum(len(t) for t in captures[name].irm_outputs)
    return captures, {"tokens": tokens, "bytes_per_token": size / max(tokens, 1)}


def striation_table(matrices: dict[str, np.ndarray], shuffled_runs: Sequence[str], k: int) -> pd.DataFrame:
    """striation_metrics of every run and control, and of each of `shuffled_runs` with its indices
    shuffled per layer ("<run> (shuffled)": what chance looks like). One row per name."""
    metrics = {name: striation_metrics(matrix, k) for name, matrix in matrices.items()}
    metrics |= {f"{name} (shuffled)": striation_metrics(shuffled_control(matrices[name], seed=0), k) for name in shuffled_runs}
    return pd.DataFrame(metrics).T


def evidence_runs(names: Sequence[str], flags: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The runs the claims read and the flagged ones ({name: flag}, irmlib.profile_runs.flags_of_runs):
    runs flagged unstable or host damaged are shown, never pooled. Where every run is flagged,
    all are read (so the tables and figures still show them) and `claims` says not tested."""
    flagged = {name: flags[name] for name in names if not is_evidence(flags.get(name, "ok"))}
    kept = [name for name in names if name not in flagged]
    return (kept or list(names)), flagged


def clearest_first(table: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """`names` ordered by how clearly each is striated (index share minus layer share), largest
    first: the order of the heatmap panels."""
    return sorted(names, key=lambda n: float(table.loc[n, "index_share"] - table.loc[n, "layer_share"]), reverse=True)


def consistency(matrices: dict[str, np.ndarray], k: int) -> dict:
    """Across the trained runs: the shared dominant index (None where no index dominates two
    runs), `tied_with` (other indices that dominate as many runs: the shared one was chosen among
    them by pooled importance), top-1 and top-k agreement (NaN with one run), the run-by-run
    Spearman matrix of per-index importance and its median off the diagonal."""
    importances = {name: index_importance(m) for name, m in matrices.items()}
    several = len(importances) > 1
    correlations = importance_correlations(importances)
    off_diagonal = correlations.to_numpy()[~np.eye(len(correlations), dtype=bool)]
    shared = shared_dominant_index(matrices)
    dominants = [dominant_index(m) for m in matrices.values()]
    tied = sorted({i for i in dominants if i != shared and dominants.count(i) == dominants.count(shared)}) if shared is not None else []
    return {"shared_dominant_index": shared, "tied_with": tied,
            "top1_agreement": top_k_agreement(importances, 1) if several else float("nan"),
            f"top{k}_agreement": top_k_agreement(importances, k) if several else float("nan"),
            "median_spearman": float(np.median(off_diagonal)) if len(off_diagonal) else float("nan"),
            "correlations": correlations}


def dominant_ranks_on_host(host_table: pd.DataFrame, dominant: dict[str, int]) -> pd.DataFrame:
    """Per run: its dominant index and that index's ranks in the host (irmlib.residual.host_ranks)."""
    return pd.DataFrame({name: {"dominant_index": index, **host_ranks(host_table, index)} for name, index in dominant.items()}).T


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
    vector = train_steering_vector(host.model, host.tokenizer, list(pairs), layers=list(range(host.n_layers)),
                                   read_token_index=read_token_index, batch_size=batch_size, show_progress=False)
    return torch.stack([vector.layer_activations[i].float().cpu() for i in range(host.n_layers)]).double().numpy()


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


def claims(table: pd.DataFrame, trained: Sequence[str], shuffled: Sequence[str], agreement: dict, massive_index: int,
           massive_ratio: float, ranks: pd.DataFrame, steering: pd.DataFrame, analysis,
           flagged: dict[str, str] | None = None) -> list[Claim]:
    """Notebook 04's claims about the trained runs (rows of `table`, from `striation_table`):
    (1) striations: the mean index share over analysis.striated_share_ratio x the largest of the
    mean layer share, the untrained control's and the shuffled controls' index share; (2) the
    dominant index is in the top k of nearly every layer (mean vertical continuity at least
    analysis.nearly_every_layer); (3) one index dominates every run (a shared index that is
    every run's dominant index; none where no index dominates two runs); (4) that index is the
    host's massive-activation dimension; (5) a steering vector peaks at the shared index (4 and 5
    not tested without a shared index). flagged: {run: flag} of runs left out (`evidence_runs`),
    named in claim 1; where every run read is flagged, every claim is not tested."""
    runs, controls = table.loc[list(trained)], table.loc[list(shuffled)]
    ratio = analysis.striated_share_ratio
    index_share, layer_share = float(runs.index_share.mean()), float(runs.layer_share.mean())
    floor = max(layer_share, float(table.loc["untrained", "index_share"]), float(controls.index_share.mean()))
    shared = agreement["shared_dominant_index"]
    per_run = {name: int(i) for name, i in runs.dominant_index.items()}
    shared_count = sum(i == shared for i in per_run.values())
    k = analysis.top_k
    agree = f"top-1 agreement {fmt(agreement['top1_agreement'])}, top-{k} {fmt(agreement[f'top{k}_agreement'])}"
    found = [
        Claim("1", "Striations: the index explains much more of the variance than the layer", verdict(index_share > ratio * floor),
              f"Index share vs layer share (trained runs, mean): {index_share:.2f} vs {layer_share:.2f}; untrained control "
              f"{table.loc['untrained', 'index_share']:.2f} vs {table.loc['untrained', 'layer_share']:.2f}; shuffled "
              f"{controls.index_share.mean():.2f} (the claim needs {ratio:g}x the largest of the layer share and the controls')."),
        Claim("2", f"The dominant index is in the top {k} of nearly every layer", verdict(runs.vertical_continuity.mean() >= analysis.nearly_every_layer),
              f"Mean vertical continuity {runs.vertical_continuity.mean():.2f} (shuffled {controls.vertical_continuity.mean():.2f}; "
              f"nearly every layer: {analysis.nearly_every_layer:g} or more)."),
        Claim("3", "One index dominates every run", verdict(shared is not None and shared_count == len(per_run)),
              (f"Shared dominant index {shared} dominates {shared_count} of {plural(len(per_run), 'run')}" if shared is not None
               else "No shared index: no index dominates two runs")
              + (f", tied with {agreement['tied_with']} (as many runs each; {shared} has the larger pooled importance)"
                 if agreement.get("tied_with") else "")
              + f" (per run: {per_run}); {agree}."),
        Claim("4", "The dominant index is the host's massive-activation dimension",
              verdict(None if shared is None else shared == massive_index),
              f"The host's massive-activation index is {massive_index} ({massive_ratio:.0f} x the median |h|); it dominates "
              f"{sum(i == massive_index for i in per_run.values())} of {plural(len(per_run), 'run')}; rank of each run's dominant index "
              f"by massive activation (1 = largest): {ranks['rank_largest_massive_ratio_max'].astype(int).to_dict()}"
              + ("; there is no shared index to compare with." if shared is None else ".")),
    ]
    if len(steering):
        found.append(Claim("5", "A steering vector peaks at the IRM's shared index",
                           verdict(None if shared is None else bool((steering.dominant_index == shared).any())),
                           f"Steering vectors' dominant indices {steering.dominant_index.to_dict()}; index share "
                           f"{steering.index_share.astype(float).round(2).to_dict()}; Spearman with the IRM's importance "
                           f"{steering.spearman_with_irm.astype(float).round(2).to_dict()}"
                           + ("; there is no shared index to compare with." if shared is None else ".")))
    flagged = flagged or {}
    if flagged:
        left_out = f" Left out as flagged: {flagged}."
        found[0] = replace(found[0], evidence=found[0].evidence + left_out)
    if trained and all(name in flagged for name in trained):
        found = [replace(c, verdict=NOT_TESTED, evidence=f"Every run is flagged, so none is evidence. {c.evidence}") for c in found]
    return found
