"""The shipped data sets validate and meet their rules; bad files get errors naming file, line, field;
tokenising masks labels as asked; the datasheet counts match the files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from irmlib.data import EMOTIONS, DataError, as_datasets, load_alignment, load_judge, rewrite_of
from irmlib.prompts import make_collate, tokenize
from irmlib.studies.data_sheet import count_table, normalise, opening_shares


@pytest.fixture(scope="module")
def alignment():
    return load_alignment()


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def test_alignment_has_500_questions_each_in_four_tones(alignment):
    by_question = Counter(row["question"] for row in alignment)
    assert len(by_question) >= 500
    assert set(by_question.values()) == {4}
    assert Counter(row["emotion"] for row in alignment) == {e: len(by_question) for e in EMOTIONS}


def test_split_is_fixed_by_question_at_about_80_10_10(alignment):
    splits = Counter(row["split"] for row in alignment if row["emotion"] == "neutral")
    total = sum(splits.values())
    assert abs(splits["train"] / total - 0.8) < 0.05
    assert abs(splits["validation"] / total - 0.1) < 0.04 and abs(splits["test"] / total - 0.1) < 0.04


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_no_three_word_opening_starts_more_than_3_percent_of_rewrites(alignment, emotion):
    rewrites = [rewrite_of(row) for row in alignment if row["emotion"] == emotion]
    top, share = opening_shares(rewrites)[0]
    assert share <= 0.03, f"{emotion}: '{top}' opens {share:.1%} of rewrites"


def test_emotional_rewrites_are_not_the_answer_with_words_around_it(alignment):
    offenders = [row["id"] for row in alignment
                 if row["emotion"] != "neutral" and normalise(row["answer"]) in normalise(rewrite_of(row))]
    assert not offenders, offenders[:10]


def test_rewrites_have_no_stage_directions(alignment, judge):
    assert not [row["id"] for row in alignment + judge if "*" in row["text"]]


def test_judge_has_200_texts_per_label_with_varied_openings(judge):
    counts = Counter(row["label"] for row in judge)
    assert all(counts[label] >= 200 for label in EMOTIONS), counts
    for label in EMOTIONS:
        top, share = opening_shares([row["text"] for row in judge if row["label"] == label])[0]
        assert share <= 0.03, f"{label}: '{top}' opens {share:.1%} of texts"
    assert len({normalise(row["text"]) for row in judge}) == len(judge)


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"id": "a-anger", "question": "Q?", "answer": "A.", "emotion": "anger", "text": "Q? Angry A!", "split": "train"}


@pytest.mark.parametrize("rows,message", [
    ([GOOD, "{not json"], r"line 2: not valid JSON"),
    ([{**GOOD, "text": ""}], r"line 1, field 'text': missing or empty"),
    ([GOOD, {**GOOD}], r"line 2, field 'id': duplicate id 'a-anger' \(first on line 1\)"),
    ([GOOD, {**GOOD, "id": "a-sad", "emotion": "sadness", "split": "test"}], r"line 2, field 'split': question 'Q\?' is in 'test'"),
    ([{**GOOD, "emotion": "rage"}], r"line 1, field 'emotion': 'rage' is not one of"),
    ([{**GOOD, "text": "Something else"}], r"field 'text': must be the question"),
    ([], r"no rows"),
])
def test_malformed_alignment_files_name_file_line_and_field(tmp_path, rows, message):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as info:
        load_alignment(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_judge(tmp_path / "nope.jsonl")


def test_as_datasets_splits_one_emotion(alignment):
    splits = as_datasets(alignment, "joy", limit=5)
    assert set(splits) == {"train", "validation", "test"}
    assert all(len(splits[s]) == 5 and set(splits[s]["emotion"]) == {"joy"} for s in splits)
    assert all(len(split) == 0 for split in as_datasets(alignment, "joy", limit=0).values()), "a limit of 0 is not 'all rows'"
    with pytest.raises(DataError, match="emotion 'rage' unknown"):
        as_datasets(alignment, "rage")


class WordTokenizer:
    """A whitespace tokenizer with offsets, enough to test label masking."""

    eos_token = "</s>"

    def __call__(self, texts, add_special_tokens=True, truncation=False, max_length=None, return_offsets_mapping=False):
        ids, offsets = [], []
        for text in texts:
            words, spans, position = text.replace("</s>", " </s>").split(), [], 0
            for word in words:
                start = text.find(word.replace(" ", ""), position)
                spans.append((start, start + len(word)))
                position = start + len(word)
            ids.append([len(w) for w in words][:max_length])
            offsets.append(spans[:max_length])
        return {"input_ids": ids, "offset_mapping": offsets}


def test_tokenize_scores_the_answer_only_when_asked():
    tok = WordTokenizer()
    everything = tokenize(tok, ["Why so?"], ["Because it is."], max_length=32, loss_on="all")[0]
    answer = tokenize(tok, ["Why so?"], ["Because it is."], max_length=32, loss_on="answer")[0]
    assert everything["labels"] == everything["input_ids"]
    assert answer["labels"][:2] == [-100, -100] and answer["labels"][2:] == answer["input_ids"][2:]
    batch = make_collate(0)([everything, {"input_ids": [7], "labels": [7]}])
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"][1].tolist() == [1, 0, 0, 0, 0, 0]
    assert batch["labels"][1, 1:].eq(-100).all()


def test_judge_answers_share_no_six_word_span_with_the_alignment_rows(alignment, judge):
    """The judge reads answers, never the alignment data's own wording (data/README.md)."""
    def spans(text):
        words = normalise(text).split()
        return {tuple(words[i:i + 6]) for i in range(len(words) - 5)}

    aligned = set().union(*(spans(row["text"]) for row in alignment))
    answers = [row for row in judge if row["kind"] == "answer"]
    assert len(answers) >= 1000
    assert not [row["id"] for row in answers if spans(row["text"]) & aligned]


def test_datasheet_counts_match_the_files(alignment, judge):
    sheet = (Path(__file__).parent.parent / "data" / "README.md").read_text()
    assert count_table(alignment, "emotion") in sheet
    assert count_table(judge, "label") in sheet
