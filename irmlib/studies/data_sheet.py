"""Notebook 01's study: statistics of the data sets that notebook 01 and data/README.md (the
datasheet) show, and its claims.

Counts by split, openings (how varied the rewrites begin), distinctive words per tone, how well a
bag-of-words classifier tells the tones apart, length-matched subsets, whether the emotion judge
reads length rather than tone, and both instruments measured on the test split of
data/judge_eval (or on its fresh set, `split="fresh"`): the judge's accuracy and recall per label,
the fluency gate's precision and recall.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from scipy.stats import binomtest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.feature_selection import chi2
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.tree import DecisionTreeClassifier

from ..claims import Claim, verdict
from ..data import EMOTIONS, SPLITS, load_judge_eval
from ..host import Host
from ..judge import EmotionJudge
from ..scoring import mean_ci


def normalise(text: str) -> str:
    """Lower-case words only, for comparing texts whatever their punctuation."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def opening(text: str, words: int = 3) -> str:
    """The first `words` words of a text, normalised."""
    return " ".join(normalise(text).split()[:words])


def opening_shares(texts: list[str], words: int = 3) -> list[tuple[str, float]]:
    """Each opening with the share of texts that start with it, most common first."""
    counts = Counter(opening(t, words) for t in texts)
    return [(o, n / len(texts)) for o, n in counts.most_common()]


def distinctive_words(texts: list[str], labels: list[str], top: int = 10) -> dict[str, list[str]]:
    """For each label, the words most over-represented in its texts (chi-squared, one vs rest)."""
    vectorizer = CountVectorizer(stop_words="english", min_df=3, binary=True)
    counts = vectorizer.fit_transform(texts)
    vocabulary = vectorizer.get_feature_names_out()
    result = {}
    for label in sorted(set(labels)):
        is_label = [l == label for l in labels]
        scores, _ = chi2(counts, is_label)
        in_label = counts[is_label].mean(axis=0).A1
        elsewhere = counts[[not x for x in is_label]].mean(axis=0).A1
        ranked = [i for i in scores.argsort()[::-1] if in_label[i] > elsewhere[i]]
        result[label] = [str(vocabulary[i]) for i in ranked[:top]]
    return result


def tone_separability(texts: list[str], labels: list[str], folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a bag-of-words classifier telling the labels apart."""
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, texts, labels, cv=cv).mean())


def count_table(rows: list[dict], label: str) -> str:
    """A Markdown table of row counts: `label` values by split (the datasheet shows these)."""
    counts = Counter((row[label], row["split"]) for row in rows)
    values = [v for v in EMOTIONS if any(k[0] == v for k in counts)]
    lines = [f"| {label} | " + " | ".join(SPLITS) + " | total |", "| --- |" + " ---: |" * (len(SPLITS) + 1)]
    for value in values:
        cells = [counts[(value, split)] for split in SPLITS]
        lines.append(f"| {value} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    return "\n".join(lines)


def length_matched(labels: list[str], words: list[int], seed: int = 0) -> np.ndarray:
    """Indices of a subset in which every label has the same number of texts at every word count:
    at each count, as many texts of each label as the rarest label has there, drawn at random
    (`seed`). Word count then says nothing about the label. Returns sorted indices [n_matched]."""
    rng = np.random.default_rng(seed)
    labels, words = np.asarray(labels), np.asarray(words)
    chosen = []
    for count in np.unique(words):
        at_count = {label: np.flatnonzero((words == count) & (labels == label)) for label in np.unique(labels)}
        n = min(len(indices) for indices in at_count.values())
        chosen += [rng.choice(indices, n, replace=False) for indices in at_count.values() if n]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)


def length_only_accuracy(labels: list[str], words: list[int], folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a classifier that sees only the word count (a decision tree,
    so any pattern of lengths per label counts, not just "shorter" vs "longer"); NaN where a label
    has fewer texts than `folds`."""
    if min(Counter(labels).values(), default=0) < folds:
        return float("nan")
    features = np.asarray(words, dtype=float).reshape(-1, 1)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(DecisionTreeClassifier(min_samples_leaf=5, random_state=seed), features, labels, cv=cv).mean())


def judged_labels(judge: EmotionJudge, texts: list[str]) -> np.ndarray:
    """The judge's argmax label per text, "unscored" for a text the gate keeps from it (which
    counts as wrong wherever accuracy is measured)."""
    probabilities = judge.probabilities(texts)
    scored = probabilities.notna().all(axis=1)
    return np.where(scored, probabilities.fillna(-1.0).idxmax(axis=1), "unscored")


def proportion(successes: int, trials: int) -> dict:
    """A proportion with its 95% Wilson interval: {value, low, high, n}."""
    if trials == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    interval = binomtest(successes, trials).proportion_ci(method="wilson")
    return {"value": successes / trials, "low": float(interval.low), "high": float(interval.high), "n": trials}


EVAL_SPLITS = ("dev", "test", "fresh")


def eval_rows(split: str = "test") -> tuple[list[dict], list[dict]]:
    """The (tone, gate) rows of data/judge_eval the instruments are measured on: the "test" or
    "dev" split of tone.jsonl and gate.jsonl, or "fresh": all of tone_fresh.jsonl and
    gate_fresh.jsonl (held out from everything, read once; data/judge_eval/README.md)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"judge evaluation split '{split}' unknown; choose one of {', '.join(EVAL_SPLITS)}.")
    tone, gate = ("tone_fresh", "gate_fresh") if split == "fresh" else ("tone", "gate")
    return ([row for row in load_judge_eval(tone) if row["split"] == split],
            [row for row in load_judge_eval(gate) if row["split"] == split])


def judge_eval(judge: EmotionJudge, rows: list[dict] | None = None, by: tuple[str, ...] = (), split: str = "test") -> dict:
    """The judge on labelled texts (`rows`; without them, the tone rows of `split`, see
    `eval_rows`: data/judge_eval/tone.jsonl's test split by default, "fresh" for tone_fresh.jsonl):
    accuracy and recall per label with 95% Wilson intervals, unscored texts counted wrong; the
    confusion counts {true: {judged: n}}; the number unscored. With `by` (row fields such as
    "source", "hard_case"), also "by": {field: {value: {"correct", "texts", "accuracy"}}}."""
    if rows is None:
        rows = eval_rows(split)[0]
    labels = np.asarray([row["label"] for row in rows])
    judged = judged_labels(judge, [row["text"] for row in rows])
    accuracy = proportion(int((judged == labels).sum()), len(rows))
    recall = {label: proportion(int(((judged == labels) & (labels == label)).sum()), int((labels == label).sum()))
              for label in judge.labels}
    confusion = {label: dict(Counter(judged[labels == label].tolist())) for label in judge.labels}
    measure = {"texts": len(rows), "accuracy": accuracy["value"], "accuracy_interval": [accuracy["low"], accuracy["high"]],
               "recall": {label: r["value"] for label, r in recall.items()},
               "recall_interval": {label: [r["low"], r["high"]] for label, r in recall.items()},
               "confusion": confusion, "unscored": int((judged == "unscored").sum())}
    if by:
        correct = judged == labels
        measure["by"] = {}
        for field in by:
            values = np.asarray([row[field] for row in rows])
            measure["by"][field] = {value: {"correct": int(correct[values == value].sum()), "texts": int((values == value).sum()),
                                            "accuracy": float(correct[values == value].mean())}
                                    for value in sorted(set(values.tolist()))}
    return measure


def gate_eval(judge: EmotionJudge, gate_rows: list[dict] | None = None, tone_rows: list[dict] | None = None,
              split: str = "test", host: Host | None = None) -> dict:
    """The fluency gate (`judge.gate`: the rules, the word-order rule under the base `host` where it
    is given, and the word-salad probe) on hand-labelled texts
    (`gate_rows`; without them, the gate rows of `split`, see `eval_rows`: data/judge_eval/gate.jsonl's
    test split by default, "fresh" for gate_fresh.jsonl), degenerate the positive class: precision
    and recall with 95% Wilson intervals, the accuracy over the three labels, the texts it got wrong,
    and the false-degenerate rate on tone texts (all fluent; `tone_rows`, else those of `split`).
    `perplexity_host` names the host whose perplexity the gate used, None where it used none."""
    if gate_rows is None or tone_rows is None:
        tone_of_split, gate_of_split = eval_rows(split)
        gate_rows = gate_of_split if gate_rows is None else gate_rows
        tone_rows = tone_of_split if tone_rows is None else tone_rows
    truth = np.asarray([row["label"] for row in gate_rows])
    gated = np.asarray(judge.gate([row["text"] for row in gate_rows], host))
    hits = int(((gated == "degenerate") & (truth == "degenerate")).sum())
    precision = proportion(hits, int((gated == "degenerate").sum()))
    recall = proportion(hits, int((truth == "degenerate").sum()))
    tone_gated = np.asarray(judge.gate([row["text"] for row in tone_rows], host))
    false_degenerate = proportion(int((tone_gated == "degenerate").sum()), len(tone_rows))
    return {"texts": len(gate_rows), "perplexity_host": None if host is None else host.name, "precision": precision["value"], "precision_interval": [precision["low"], precision["high"]],
            "recall": recall["value"], "recall_interval": [recall["low"], recall["high"]],
            "label_accuracy": float((gated == truth).mean()),
            "wrong": [{"text": row["text"], "label": row["label"], "gate": label} for row, label in zip(gate_rows, gated)
                      if label != row["label"]],
            "tone_texts": len(tone_rows), "tone_false_degenerate": false_degenerate["value"],
            "tone_not_fluent": [row["text"] for row, label in zip(tone_rows, tone_gated) if label != "fluent"]}


def judge_length_check(judge: EmotionJudge, texts: list[str], labels: list[str], seed: int = 0, limit: int | None = None) -> dict:
    """Whether the judge reads length rather than tone, on texts it was not trained on.

    The judge's accuracy (argmax label) on every text whose label it knows, and on a length-matched
    subset (length_matched: each label equally often at every word count), each
    with a 95% interval; beside them, a classifier that sees only the word count, on both sets (on
    the matched subset it is at chance by construction, which shows the matching worked).
    `leans_on_length` is True where the matched accuracy's interval lies wholly below the
    accuracy on every text. `limit`: score at most this many texts, drawn at random (`seed`).
    """
    known = [i for i, label in enumerate(labels) if label in judge.labels]
    if limit is not None and len(known) > limit:
        known = sorted(np.random.default_rng(seed).choice(known, limit, replace=False).tolist())
    texts, labels = [texts[i] for i in known], [labels[i] for i in known]
    words = [len(text.split()) for text in texts]
    correct = (judged_labels(judge, texts) == np.asarray(labels)).astype(float)
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


def claims(separability: float, chance: float, mean_words: dict[str, float], length_check: dict, analysis) -> list[Claim]:
    """Notebook 01's three claims: (1) the tones differ in wording (a bag-of-words classifier's
    accuracy over `analysis.tone_separability_over_chance` x chance); (2) the tones' mean lengths
    lie within `analysis.length_tolerance` of each other; (3) the judge reads tone, not length
    (`judge_length_check`'s leans_on_length is False)."""
    shortest, longest = min(mean_words, key=mean_words.get), max(mean_words, key=mean_words.get)
    ratio = mean_words[longest] / mean_words[shortest]
    c = length_check
    return [
        Claim("1", "Tones differ in wording", verdict(separability > analysis.tone_separability_over_chance * chance),
              f"A bag-of-words classifier tells them apart with {separability:.1%} accuracy (chance {chance:.0%}; "
              f"the claim needs more than {analysis.tone_separability_over_chance:g}x chance)."),
        Claim("2", f"Lengths comparable (within {analysis.length_tolerance - 1:.0%})", verdict(ratio <= analysis.length_tolerance),
              "Mean rewrite length " + ", ".join(f"{e} {w:.1f}" for e, w in mean_words.items())
              + f" words: {longest} rewrites are {ratio:.2f}x as long as {shortest} ones."),
        Claim("3", "The judge reads tone, not length", verdict(not c["leans_on_length"]),
              f"Its accuracy is {c['accuracy']:.2f} [{c['accuracy_low']:.2f}, {c['accuracy_high']:.2f}] on all {c['texts']} rewrites "
              f"and {c['matched_accuracy']:.2f} [{c['matched_accuracy_low']:.2f}, {c['matched_accuracy_high']:.2f}] on "
              f"{c['matched_texts']} length-matched ones (chance {c['chance']:.2f}); word count alone gives "
              f"{c['length_only_accuracy']:.2f} on all and {c['matched_length_only_accuracy']:.2f} on the matched set."),
    ]


def instrument_claims(judge_measure: dict, gate_measure: dict, analysis) -> list[Claim]:
    """The instruments' claims, on held-out texts like the IRMs write (data/judge_eval's test
    split): (4) the judge reads the tone of answers (`judge_eval`: accuracy at least
    `analysis.judge_min_accuracy`, every label's recall at least `analysis.judge_min_recall`);
    (5) the fluency gate finds degenerate text (`gate_eval`: precision and recall at least
    `analysis.gate_min_precision` and `gate_min_recall`; it says whether the gate used perplexity)."""
    j, g = judge_measure, gate_measure
    return [
        Claim("4", "The judge reads the tone of answers",
              verdict(j["accuracy"] >= analysis.judge_min_accuracy and all(r >= analysis.judge_min_recall for r in j["recall"].values())),
              f"On {j['texts']} held-out answers: accuracy {j['accuracy']:.3f} [{j['accuracy_interval'][0]:.2f}, "
              f"{j['accuracy_interval'][1]:.2f}] (needs {analysis.judge_min_accuracy:g}); recall "
              + ", ".join(f"{label} {r:.3f}" for label, r in j["recall"].items())
              + f" (each needs {analysis.judge_min_recall:g}); {j['unscored']} unscored."),
        Claim("5", "The fluency gate finds degenerate text",
              verdict(g["precision"] >= analysis.gate_min_precision and g["recall"] >= analysis.gate_min_recall),
              f"On {g['texts']} held-out texts: precision {g['precision']:.3f} [{g['precision_interval'][0]:.2f}, "
              f"{g['precision_interval'][1]:.2f}], recall {g['recall']:.3f} [{g['recall_interval'][0]:.2f}, "
              f"{g['recall_interval'][1]:.2f}] (each needs {analysis.gate_min_precision:g} / {analysis.gate_min_recall:g}); "
              f"{g['tone_false_degenerate']:.1%} of {g['tone_texts']} fluent tone texts called degenerate; "
              + (f"perplexity under {g['perplexity_host']} is part of the gate." if g.get("perplexity_host")
                 else "perplexity is not part of the gate (no host given).")),
    ]
