"""Scoring generations: tables of generations, the fluency gate, the judge's probabilities,
fluency measures (perplexity under the base host, distinct-2), a set's quality and the paired
statistics every verdict reads.

Every table of scored generations has one row per generation with `question`, `text`, `gate`
(fluent, degenerate or too_short: irmlib.gate with the base host's perplexity, and the judge's
word-salad probe), `too_short`,
`p_<emotion>` (NaN unless the gate calls the text fluent), `perplexity` and `distinct_2`.
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
from .gate import GateRules
from .judge import EmotionJudge
from .prompts import encode_prompts, format_prompt

def mean_ci(values, confidence: float = 0.95, bounds: tuple[float, float] | None = None,
            min_n: int = 2) -> tuple[float, float, float]:
    """Mean and a t-interval: (mean, low, high), ignoring NaNs. bounds: the values' range (e.g.
    (0, 1) for probabilities), which the interval is cut to. Under `min_n` values there is no
    interval (NaN ends): a t-interval of one to a few texts says nothing."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < max(min_n, 2):
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


def paired_change(rows: pd.DataFrame, base: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """Mean and 95% interval (mean_ci) of `column` in `rows` minus the base host's on the same
    question (the base's mean where it has several rows for one question)."""
    base_by_question = base.groupby("question")[column].mean()
    return mean_ci(rows[column].to_numpy() - base_by_question.reindex(rows.question).to_numpy())


def paired_scored(rows: pd.DataFrame, base: pd.DataFrame, column: str) -> int:
    """How many rows of `rows` pair a scored `column` with a scored base value on the same question:
    what a paired change rests on (a text the gate rejects, on either side, drops its pair)."""
    base_by_question = base.groupby("question")[column].mean()
    return int((rows[column].notna().to_numpy() & base_by_question.reindex(rows.question).notna().to_numpy()).sum())


def target_change(rows: pd.DataFrame, base: pd.DataFrame, emotion: str, min_scored: int) -> dict:
    """The paired change of p(`emotion`) in `rows` against the base host's on the same prompts:
    mean, 95% interval, `scored` (prompts where both texts are scored, `paired_scored`) and the
    verdict (`change_verdict`)."""
    column = f"p_{emotion}"
    mean, low, high = paired_change(rows, base, column)
    scored = paired_scored(rows, base, column)
    return {"p_target_change": mean, "p_target_change_low": low, "p_target_change_high": high, "scored": scored,
            "verdict": change_verdict(low, high, scored, min_scored)}


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


def text_quality(gates, rules: GateRules = GateRules()) -> str:
    """Whether a set of generations is text a tone can be read from, from each text's gate label:
    "degenerate: N% under two words" when more than half are too short, "degenerate: N% degenerate"
    when more than `rules.max_degenerate_share` are degenerate, else "fluent". The judge scores only
    fluent texts, so a verdict on a degenerate set rests on its few readable texts.

    gates: one gate label per generation (the `gate` column)."""
    gates = pd.Series(list(gates), dtype=object)
    if gates.empty:
        return "degenerate: no texts"
    short, degenerate = float((gates == "too_short").mean()), float((gates == "degenerate").mean())
    if short > 0.5:
        return f"degenerate: {short:.0%} under two words"
    if degenerate > rules.max_degenerate_share:
        return f"degenerate: {degenerate:.0%} degenerate texts"
    return "fluent"


def score_generations(host: Host, judge: EmotionJudge, generations: pd.DataFrame, prompt_format: str, injection=None) -> pd.DataFrame:
    """Add the fluency gate (`gate`, `too_short`: the rules, the word-order rule under the embedded
    base host and the word-salad probe, as notebook 01 measures it), judge probabilities (`p_<emotion>`, NaN for a text
    the gate does not call fluent), base-host perplexity and distinct-2 to a table with `question`
    and `text` columns. The IRM, if any, is switched off for perplexity."""
    scored = generations.reset_index(drop=True).copy()
    # The gate's perplexity is read under the judge's own host: the embedded base host, hook-free,
    # the one its thresholds were set and measured with (notebook 01), whatever host generated.
    scored["gate"], probabilities = judge.read(scored.text.tolist(), host=judge.base_host)
    probabilities = probabilities.add_prefix("p_")
    off = injection.settings(active=False) if injection is not None else nullcontext()
    with off:
        scored["perplexity"] = perplexity(host, scored.question.tolist(), scored.text.tolist(), prompt_format)
    scored["distinct_2"] = [distinct_n(t, 2) for t in scored.text]
    scored["too_short"] = scored.gate == "too_short"
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


def tone_table(host: Host, judge: EmotionJudge, irms: dict, emotion: str, questions: list[str], prompt_format: str,
               max_new_tokens: int, min_scored: int) -> pd.DataFrame:
    """Greedy generations of the base host and each IRM, scored for one target emotion: one row per
    model ("base", then `irms`' names) with p_target (mean, 95% interval over scored texts), the
    paired change against the base on the same prompts with its own 95% interval and verdict
    ("not tested" under `min_scored` scored texts), the number of scored texts, median perplexity,
    mean distinct-2 and `text` (`text_quality` of the gate labels: fluent or degenerate); `scored`
    counts the prompts where both the model's and the base's texts are scored."""
    table = generation_table(host, {"base": None, **irms}, questions, prompt_format, max_new_tokens, modes=("greedy",))
    scored = score_generations(host, judge, table, prompt_format)
    base = scored[scored.model == "base"]
    rows = {}
    for model, group in scored.groupby("model", sort=False):
        mean, low, high = mean_ci(group[f"p_{emotion}"], bounds=(0.0, 1.0), min_n=min_scored)
        change = target_change(group, base, emotion, min_scored)
        rows[model] = {"p_target": mean, "p_target_low": low, "p_target_high": high, **change,
                       "verdict": "base" if model == "base" else change["verdict"],
                       "median_perplexity": float(group.perplexity.median()), "distinct_2": float(group.distinct_2.mean()),
                       "text": text_quality(group.gate, judge.rules)}
    return pd.DataFrame(rows).T
