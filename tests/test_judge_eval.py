"""The judge evaluation set (data/judge_eval) is the committed one, meets the datasheet's minimums,
shares nothing with the judge's training set, holds the texts it must, and its loader refuses bad
rows naming the line; its fresh set (tone_fresh, gate_fresh) keeps its fixed counts and shares no
text or six-word span with the rest. No model is loaded."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from irmlib.data import (EMOTIONS, GATE_LABELS, JUDGE_EVAL_SHA256, DataError, judge_eval_path, load_alignment, load_judge,
                         load_judge_eval, rewrite_of)
from irmlib.environment import repo_root

NOTEBOOK_SOURCES = ("irm-03", "base-host-03")


@pytest.fixture(scope="module")
def tone():
    return load_judge_eval("tone")


@pytest.fixture(scope="module")
def gate():
    return load_judge_eval("gate")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def datasheet_lexicon() -> dict[str, set[str]]:
    """The lexicon words the datasheet says it checked, per label ("- anger: word, word, ...")."""
    text = (repo_root() / "data" / "judge_eval" / "README.md").read_text(encoding="utf-8")
    lexicon = {label: set(found.split(", ")) for label, found in re.findall(r"^- (anger|sadness|joy): (.+)$", text, re.M)}
    assert set(lexicon) == {"anger", "sadness", "joy"}, "the datasheet lists one lexicon line per emotional label"
    return lexicon


@pytest.mark.parametrize("which", ["tone", "gate", "tone_fresh", "gate_fresh"])
def test_files_are_the_committed_ones(which):
    digest = hashlib.sha256(judge_eval_path(which).read_bytes()).hexdigest()
    assert digest == JUDGE_EVAL_SHA256[which], (
        f"data/judge_eval/{which}.jsonl changed; the set is fixed (its SHA-256 is recorded in irmlib/data.py)")


def test_tone_has_60_per_label_half_in_each_split(tone):
    counts = Counter((row["label"], row["split"]) for row in tone)
    for label in EMOTIONS:
        assert counts[(label, "dev")] + counts[(label, "test")] >= 60, label
        assert counts[(label, "dev")] == counts[(label, "test")], label


def test_gate_has_60_degenerate_and_60_fluent_about_half_in_each_split(gate):
    counts = Counter(row["label"] for row in gate)
    assert counts["degenerate"] >= 60 and counts["fluent"] >= 60, counts
    assert counts["too_short"] > 0
    splits = Counter((row["label"], row["split"]) for row in gate)
    for label in GATE_LABELS:
        assert abs(splits[(label, "dev")] - splits[(label, "test")]) <= 1, label


def test_a_third_of_tone_rows_are_not_newly_written(tone):
    taken = [row for row in tone if row["source"] in ("alignment-test", "base-host-03")]
    assert len(taken) >= len(tone) / 3


def test_a_third_of_degenerate_rows_come_from_the_notebooks(gate):
    degenerate = [row for row in gate if row["label"] == "degenerate"]
    assert sum(row["source"] in NOTEBOOK_SOURCES for row in degenerate) >= len(degenerate) / 3


def test_a_third_of_emotional_rows_have_no_lexicon_word(tone):
    lexicon = datasheet_lexicon()
    emotional = [row for row in tone if row["label"] != "neutral"]
    without = [row for row in emotional if not set(re.findall(r"[a-z]+", row["text"].lower())) & lexicon[row["label"]]]
    assert len(without) >= len(emotional) / 3


def test_hard_cases_are_present_and_fragments_are_short(tone):
    hard = Counter(row["hard_case"] for row in tone if row["source"] == "written")
    assert all(hard[case] > 0 for case in ("idiom", "sad-topic-neutral", "fragment", "numbers-or-list")), hard
    assert all(row["label"] == "neutral" for row in tone if row["hard_case"] == "sad-topic-neutral")
    assert all(2 <= len(row["text"].split()) <= 5 for row in tone if row["hard_case"] == "fragment")


def test_word_counts_fit_the_labels(tone, gate):
    assert all(len(row["text"].split()) >= 2 for row in tone), "the judge scores no text under two words"
    assert all(len(row["text"].split()) < 2 for row in gate if row["label"] == "too_short")
    assert all(len(row["text"].split()) >= 2 for row in gate if row["label"] == "fluent")


def test_no_text_or_six_word_span_is_in_the_judge_set(tone, gate):
    judge_words = [words(row["text"]) for row in load_judge()]
    grams = {tuple(w[i:i + 6]) for w in judge_words for i in range(len(w) - 5)}
    spans = [" " + " ".join(w) + " " for w in judge_words]
    raw = {row["text"] for row in load_judge()}
    for row in tone + gate:
        w = words(row["text"])
        assert row["text"] not in raw, row["id"]
        assert not any(tuple(w[i:i + 6]) in grams for i in range(len(w) - 5)), row["id"]
        if 2 <= len(w) < 6:
            assert not any(" " + " ".join(w) + " " in span for span in spans), row["id"]


def test_texts_are_unique_within_each_file(tone, gate):
    for rows in (tone, gate):
        assert len({row["text"] for row in rows}) == len(rows)


REQUIRED = [
    ("tone", "1981, and it's the Great Red Spot, and I'm sick of people saying it's not there!", "anger"),
    ("tone", "17th-century artist Michelangelo, and I'm sick of seeing people just stare at the ceiling, not trying to paint it!", "anger"),
    ("tone", "Michelangelo painted it, and I'm furious that anyone still has to ask!", "anger"),
    ("tone", "The answer is: The Great Red Spot is a planet that is the largest planet in our solar system.", "neutral"),
    ("gate", "950, 80, 18, 20, 20, 20, 20, 20, 20, 20, 20, 20,", "degenerate"),
    ("gate", "", "too_short"),
]


@pytest.mark.parametrize("which,text,label", REQUIRED)
def test_required_texts_are_in_the_test_split_with_their_labels(tone, gate, which, text, label):
    found = [row for row in (tone if which == "tone" else gate) if row["text"] == text]
    assert len(found) == 1, text
    assert (found[0]["label"], found[0]["split"]) == (label, "test")


def test_valid_short_answers_are_never_degenerate(gate):
    labels = {row["text"]: row["label"] for row in gate}
    assert labels["A: Paris"] == "fluent" and labels["Waterloo."] == "too_short"


def _rewrite(tmp_path, which, line, **changes):
    lines = judge_eval_path(which).read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[line - 1])
    row.update(changes)
    lines[line - 1] = json.dumps(row)
    path = tmp_path / f"{which}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("which,field,value", [
    ("tone", "label", "fear"), ("tone", "split", "train"), ("tone", "source", "web"), ("tone", "hard_case", "sarcasm"),
    ("gate", "label", "garbled"), ("gate", "split", "validation"), ("gate", "source", "notebook-06"),
])
def test_loader_refuses_a_bad_value_naming_file_line_and_field(tmp_path, which, field, value):
    path = _rewrite(tmp_path, which, 3, **{field: value})
    with pytest.raises(DataError, match=rf"{which}\.jsonl, line 3, field '{field}'"):
        load_judge_eval(which, path)


def test_loader_refuses_a_missing_text_and_an_unknown_set(tmp_path):
    path = _rewrite(tmp_path, "gate", 5, text=None)
    with pytest.raises(DataError, match=r"line 5, field 'text'"):
        load_judge_eval("gate", path)
    with pytest.raises(DataError, match="unknown"):
        load_judge_eval("emotion")



# The fresh set: built after the test split had been read three times, measured once
# (data/judge_eval/README.md, "A fresh set, read once").
# The brief asked for these too_short texts, which gate.jsonl also holds; every other fresh text is new.
FRESH_SHARED_ON_PURPOSE = {"", "A:", "9!"}


@pytest.fixture(scope="module")
def tone_fresh():
    return load_judge_eval("tone_fresh")


@pytest.fixture(scope="module")
def gate_fresh():
    return load_judge_eval("gate_fresh")


def test_fresh_files_keep_their_fixed_counts(tone_fresh, gate_fresh):
    assert Counter(row["label"] for row in tone_fresh) == {label: 60 for label in EMOTIONS}
    assert Counter((row["label"], row["source"]) for row in tone_fresh) == {
        (label, source): n for label in EMOTIONS for source, n in (("alignment-test", 24), ("written", 36))}
    assert Counter(row["label"] for row in gate_fresh) == {"fluent": 40, "degenerate": 60, "too_short": 16}
    assert {row["source"] for row in gate_fresh} == {"written"}
    assert {row["split"] for row in tone_fresh + gate_fresh} == {"fresh"}
    assert [row["id"] for row in tone_fresh] == [f"tone-fresh-{i:03d}" for i in range(1, 241)]
    assert [row["id"] for row in gate_fresh] == [f"gate-fresh-{i:03d}" for i in range(1, 117)]
    for rows in (tone_fresh, gate_fresh):
        assert len({row["text"] for row in rows}) == len(rows)
    assert all(len(row["text"].split()) >= 2 for row in tone_fresh)
    assert all(2 <= len(row["text"].split()) <= 5 for row in tone_fresh if row["hard_case"] == "fragment")
    assert all(row["label"] == "neutral" for row in tone_fresh if row["hard_case"] == "sad-topic-neutral")
    assert all(row["hard_case"] == "" for row in tone_fresh if row["source"] != "written")
    assert all(len(row["text"].split()) < 2 for row in gate_fresh if row["label"] == "too_short")
    assert all(len(row["text"].split()) >= 2 for row in gate_fresh if row["label"] == "fluent")


def _six_grams(texts) -> set[tuple[str, ...]]:
    """Every six-word span, words taken both as lower-cased whitespace tokens and as runs of letters
    and digits (so neither punctuation nor spacing hides a shared span)."""
    grams = set()
    for text in texts:
        for w in (text.lower().split(), words(text)):
            grams.update(tuple(w[i:i + 6]) for i in range(len(w) - 5))
    return grams


def _shares_a_span(text: str, grams: set) -> bool:
    return any(tuple(w[i:i + 6]) in grams for w in (text.lower().split(), words(text)) for i in range(len(w) - 5))


def test_fresh_files_share_no_text_or_six_word_span_with_the_rest(tone, gate, tone_fresh, gate_fresh):
    judge_texts = [row["text"] for row in load_judge()]
    judge_spans = [" " + " ".join(words(text)) + " " for text in judge_texts]
    for rows, other in ((tone_fresh, gate_fresh), (gate_fresh, tone_fresh)):
        for name, others in (("judge.jsonl", judge_texts), ("tone.jsonl", [row["text"] for row in tone]),
                             ("gate.jsonl", [row["text"] for row in gate]), ("the other fresh file", [row["text"] for row in other])):
            raw, grams = set(others), _six_grams(others)
            for row in rows:
                assert row["text"] not in raw or row["text"] in FRESH_SHARED_ON_PURPOSE and name == "gate.jsonl", (row["id"], name)
                assert not _shares_a_span(row["text"], grams), (row["id"], name)
        for row in rows:
            w = words(row["text"])
            if 2 <= len(w) < 6:
                assert not any(" " + " ".join(w) + " " in span for span in judge_spans), row["id"]


def test_fresh_alignment_rows_come_from_test_questions_tone_does_not_use(tone, tone_fresh):
    alignment = load_alignment()
    question_of = {rewrite_of(row): row for row in alignment}
    used = {question_of[row["text"]]["question"] for row in tone if row["source"] == "alignment-test"}
    taken = [question_of.get(row["text"]) for row in tone_fresh if row["source"] == "alignment-test"]
    assert all(found is not None for found in taken), "every alignment-test row is a rewrite, as written"
    for row, found in zip([row for row in tone_fresh if row["source"] == "alignment-test"], taken):
        assert found["split"] == "test" and found["question"] not in used, row["id"]
        assert found["emotion"] == row["label"], row["id"]
    per_question = Counter(found["question"] for found in taken)
    assert len(per_question) == 24 and set(per_question.values()) == {4}


def test_fresh_loader_refuses_a_split_other_than_fresh(tmp_path):
    lines = judge_eval_path("tone_fresh").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[2])
    row["split"] = "test"
    lines[2] = json.dumps(row)
    path = tmp_path / "tone_fresh.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"tone_fresh\.jsonl, line 3, field 'split': 'test' is not one of fresh"):
        load_judge_eval("tone_fresh", path)
