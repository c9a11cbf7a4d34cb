"""Scoring generations: tables of generations, the judge's probabilities, fluency (perplexity under
the base host, distinct-2, text_quality) and the paired statistics every verdict reads.

Every table of scored generations has one row per generation with `question`, `text`,
`too_short` (fewer than judge.MIN_WORDS words: no emotion probability, NaN), `p_<emotion>`,
`perplexity` and `distinct_2`.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from .environment import release_freed_memory
from .generate import generate
from .host import Host
from .inject import inject
from .judge import EmotionJudge, too_short
from .prompts import encode_prompts, format_prompt

def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and a t-interval: (mean, low, high), ignoring NaNs."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values))
    return mean, mean - half, mean + half


def paired_change(rows: pd.DataFrame, base: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """Mean and 95% interval (mean_ci) of `column` in `rows` minus the base host's on the same
    question (the base's mean where it has several rows for one question)."""
    base_by_question = base.groupby("question")[column].mean()
    return mean_ci(rows[column].to_numpy() - base_by_question.reindex(rows.question).to_numpy())


def change_verdict(low: float, high: float, scored: int | None = None, min_scored: int = 0) -> str:
    """A paired change's verdict from its 95% interval: "raised" / "lowered" where the interval
    excludes 0, else "did not clearly change"; "not tested" where fewer than `min_scored` texts
    had a score (generations under two words have none), or the interval is undefined."""
    if scored is not None and scored < min_scored:
        return f"not tested ({scored} scored texts, {min_scored} needed)"
    if np.isnan(low) or np.isnan(high):
        return "not tested (no interval)"
    return "raised" if low > 0 else "lowered" if high < 0 else "did not clearly change"


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams over all word n-grams (1.0: no repetition); NaN if too short."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


@torch.inference_mode()
def perplexity(host: Host, questions: list[str], completions: list[str], prompt_format: str = "plain", batch_size: int = 8) -> np.ndarray:
    """Perplexity of each completion given its question under `host` as it is now (switch any
    IRM off first to score fluency under the base host). Returns [n]; NaN for empty completions."""
    tokenizer = host.tokenizer
    results = []
    for start in range(0, len(questions), batch_size):
        prompts = [format_prompt(tokenizer, q, prompt_format) for q in questions[start:start + batch_size]]
        texts = [p + c for p, c in zip(prompts, completions[start:start + batch_size])]
        encoded = encode_prompts(tokenizer, texts, prompt_format, padding=True, return_tensors="pt", return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")
        encoded = encoded.to(host.device)
        logits = host.model(**encoded).logits[:, :-1].float()
        targets = encoded["input_ids"][:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu()
        for i, prompt in enumerate(prompts):
            # A token belongs to the completion if it ends past the prompt and is not padding.
            scored = (offsets[i, 1:, 1] > len(prompt)) & encoded["attention_mask"][i, 1:].bool().cpu()
            results.append(float(torch.exp(nll[i][scored].mean())) if scored.any() else float("nan"))
    return np.array(results)


DEGENERATE_SHORT_SHARE = 0.5
DEGENERATE_DISTINCT_RATIO = 0.5
DEGENERATE_PERPLEXITY_RATIO = 10.0


def text_quality(distinct_2, base_distinct_2, perplexity, base_perplexity) -> str:
    """Whether generations are text a reader would call a tone at all, against the base host's on
    the same prompts: "degenerate: ..." when more than half have fewer than two words (distinct-2
    NaN: empty, or one run of symbols such as "999,,,,,"), when their mean distinct-2 is under half
    the base's (repetition, "the of the of"), or when their median perplexity under the base host
    is over 10x the base's (varied words that do not read as text); else "fluent". The judge
    scores any string, so a raised target probability on degenerate text is not a tone.

    distinct_2, perplexity: one value per generation (NaN allowed); base_*: the base host's."""
    distinct_2, base_distinct_2 = np.asarray(distinct_2, dtype=float), np.asarray(base_distinct_2, dtype=float)
    short = float(np.isnan(distinct_2).mean()) if len(distinct_2) else 1.0
    if short > DEGENERATE_SHORT_SHARE:
        return f"degenerate: {short:.0%} under two words"
    mean = float(np.nanmean(distinct_2))
    base = float(np.nanmean(base_distinct_2)) if np.isfinite(base_distinct_2).any() else float("nan")
    if mean < DEGENERATE_DISTINCT_RATIO * base:  # False when the base has no distinct-2
        return f"degenerate: repetitive (distinct-2 {mean:.2f} vs base {base:.2f})"
    ratio = float(np.nanmedian(np.asarray(perplexity, dtype=float)) / np.nanmedian(np.asarray(base_perplexity, dtype=float)))
    if ratio > DEGENERATE_PERPLEXITY_RATIO:
        return f"degenerate: perplexity x{ratio:.0f} the base's"
    return "fluent"


def score_generations(host: Host, judge: EmotionJudge, generations: pd.DataFrame, prompt_format: str, injection=None) -> pd.DataFrame:
    """Add judge probabilities (`p_<emotion>`, NaN for a text under judge.MIN_WORDS words), `too_short`,
    base-host perplexity and distinct-2 to a table with `question` and `text` columns. The IRM, if
    any, is switched off for perplexity."""
    scored = generations.reset_index(drop=True).copy()
    probabilities = judge.probabilities(scored.text.tolist()).add_prefix("p_")
    off = injection.settings(active=False) if injection is not None else nullcontext()
    with off:
        scored["perplexity"] = perplexity(host, scored.question.tolist(), scored.text.tolist(), prompt_format)
    scored["distinct_2"] = [distinct_n(t, 2) for t in scored.text]
    scored["too_short"] = [too_short(t) for t in scored.text]
    return pd.concat([scored, probabilities], axis=1)


def generation_table(host: Host, irms: dict, questions: list[str], prompt_format: str, max_new_tokens: int,
                     modes: tuple[str, ...] = ("greedy", "sampled"), sample_seed: int = 0, scale: float = 1.0,
                     masked_indices: tuple[int, ...] = ()) -> pd.DataFrame:
    """Generate every question with the base host (key None in `irms` maps to no IRM) and each IRM.

    irms: {model name: IRM or None}. Returns one row per (model, mode, question) with the text.
    """
    rows = []
    for name, irm in irms.items():
        context = inject(host, irm, scale=scale, masked_indices=masked_indices) if irm is not None else nullcontext()
        with context as injection:
            for mode in modes:
                outputs = generate(host, questions, injection, prompt_format=prompt_format, max_new_tokens=max_new_tokens,
                                   do_sample=mode == "sampled", seed=sample_seed)
                rows += [{"model": name, "mode": mode, "question": g.question, "text": g.text, "new_tokens": g.new_tokens} for g in outputs]
        release_freed_memory()
    return pd.DataFrame(rows)
