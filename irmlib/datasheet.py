"""Statistics of the data sets that notebook 01 and data/README.md (the datasheet) show.

Counts by split, openings (how varied the rewrites begin), distinctive words per tone, how well a
bag-of-words classifier tells the tones apart, and length-matched subsets (to see whether a
classifier reads length rather than tone).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from .data import EMOTIONS, SPLITS


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
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.feature_selection import chi2

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
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

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
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    if min(Counter(labels).values(), default=0) < folds:
        return float("nan")
    features = np.asarray(words, dtype=float).reshape(-1, 1)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(DecisionTreeClassifier(min_samples_leaf=5, random_state=seed), features, labels, cv=cv).mean())
