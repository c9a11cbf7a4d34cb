"""Every parser a user feeds, tried with generated input (hypothesis): alignment, judge and judge
evaluation JSONL rows, the SQuAD-format file, profile YAML, IRM_PROFILE_OVERRIDES, the --profile/--gpus command
line. Bad input ends in the project's one error base class with a message naming the file, line
or field, never another exception; valid input read back after writing it out is the same."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import irmlib.profile as profile_module
from irmlib.data import ALIGNMENT_FIELDS, EMOTIONS, JUDGE_FIELDS, SPLITS, load_alignment, load_judge, load_judge_eval
from irmlib.errors import CompanionError
from irmlib.profile import OVERRIDES_ENV, AnalysisConfig, load_profile, profile_and_gpus
from irmlib.squad import squad_pairs

CASES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_LEAVES = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
WORDS = st.text(string.ascii_letters + " ,.?'é", min_size=1, max_size=30).filter(lambda t: t.strip() and t == t.strip())


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def fails_cleanly(call, *names: str) -> None:
    """`call` either returns or raises a CompanionError whose message names one of `names`."""
    try:
        call()
    except CompanionError as err:
        assert any(name in str(err) for name in names), f"the message names none of {names}: {err}"


# ----- JSONL data files -----

def alignment_row(i: int, question: str, rewrite: str, emotion: str, split: str) -> dict:
    return {"id": f"r{i}", "question": question, "answer": rewrite, "emotion": emotion, "text": f"{question} {rewrite}", "split": split}


@CASES
@given(lines=st.lists(st.text(max_size=60) | JSON_VALUES.map(json.dumps), max_size=5), bom=st.booleans())
@example(lines=[], bom=False)
@example(lines=['{"id": "a", "id": "b"}'], bom=True)
@example(lines=['{"id": NaN}'], bom=False)
def test_bad_jsonl_ends_in_a_named_error(tmp_path_factory, lines, bom):
    path = write(tmp_path_factory.mktemp("jsonl"), "rows.jsonl", ("\ufeff" if bom else "") + "\n".join(lines))
    fails_cleanly(lambda: load_alignment(path), str(path))
    fails_cleanly(lambda: load_judge(path), str(path))
    fails_cleanly(lambda: load_judge_eval("tone", path), str(path))
    fails_cleanly(lambda: load_judge_eval("gate", path), str(path))


@CASES
@given(rows=st.lists(st.tuples(st.text(max_size=30), st.sampled_from(("fluent", "degenerate", "too_short", "salad")),
                               st.sampled_from(("irm-03", "written", "typed")), st.sampled_from(("dev", "test", "train"))),
                     max_size=5))
def test_judge_evaluation_rows_load_or_name_the_bad_field(tmp_path_factory, rows):
    """Any gate texts (empty ones too) with labels, sources and splits in or out of their lists; an
    empty file is an error."""
    lines = [json.dumps({"id": f"gate-{i:03d}", "text": text, "label": label, "source": source, "split": split})
             for i, (text, label, source, split) in enumerate(rows, 1)]
    path = write(tmp_path_factory.mktemp("gate"), "gate.jsonl", "\n".join(lines))
    valid = bool(rows) and all(label != "salad" and source != "typed" and split != "train" for _, label, source, split in rows)
    try:
        loaded = load_judge_eval("gate", path)
    except CompanionError as err:
        assert str(path) in str(err) and not valid, err
    else:
        assert valid and [row["text"] for row in loaded] == [text for text, *_ in rows]


@CASES
@given(rows=st.lists(st.tuples(WORDS, WORDS, st.sampled_from(EMOTIONS)), min_size=1, max_size=6, unique_by=lambda r: r[0]),
       data=st.data())
def test_valid_alignment_rows_read_back_the_same(tmp_path_factory, rows, data):
    split = data.draw(st.sampled_from(SPLITS))
    written = [alignment_row(i, q, r, e, split) for i, (q, r, e) in enumerate(rows)]
    path = write(tmp_path_factory.mktemp("jsonl"), "alignment.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written))
    read = [{k: v for k, v in row.items() if k != "_line"} for row in load_alignment(path)]
    assert read == written and set(read[0]) == set(ALIGNMENT_FIELDS)
    judge = [{"id": f"j{i}", "text": q, "label": e, "kind": "remark", "split": split} for i, (q, _, e) in enumerate(rows)]
    path = write(path.parent, "judge.jsonl", "".join(json.dumps(r) + "\n" for r in judge))
    assert [{k: v for k, v in row.items() if k != "_line"} for row in load_judge(path)] == judge and set(judge[0]) == set(JUDGE_FIELDS)


# ----- the SQuAD-format file -----

@CASES
@given(document=JSON_VALUES | st.fixed_dictionaries({"data": st.lists(st.fixed_dictionaries(
    {"paragraphs": st.lists(st.fixed_dictionaries({"qas": st.lists(st.dictionaries(
        st.sampled_from(["id", "question", "answers", "plausible_answers"]), JSON_VALUES), max_size=3)}), max_size=2)}), max_size=2)}))
@example(document={"data": [{"paragraphs": [{"qas": [{"id": "1", "question": "Q?", "answers": [{"text": 5}]}]}]}]})
def test_bad_squad_files_end_in_a_named_error(tmp_path_factory, document):
    path = write(tmp_path_factory.mktemp("squad"), "squad.json", json.dumps(document))
    fails_cleanly(lambda: squad_pairs(path), str(path))


@CASES
@given(pairs=st.lists(st.tuples(WORDS, WORDS), min_size=1, max_size=5))
def test_valid_squad_files_give_their_pairs(tmp_path_factory, pairs):
    document = {"data": [{"paragraphs": [{"qas": [{"id": f"q{i}", "question": q, "answers": [{"text": a}]} for i, (q, a) in enumerate(pairs)]}]}]}
    path = write(tmp_path_factory.mktemp("squad"), "squad.json", json.dumps(document))
    assert squad_pairs(path) == [{"id": f"q{i}", "question": q, "answer": a} for i, (q, a) in enumerate(pairs)]


# ----- profile YAML and overrides -----

FIELD_NAMES = sorted(profile_module.PROFILE_FIELDS + profile_module.TRAIN_FIELDS + profile_module.IRM_FIELDS + profile_module.ANALYSIS_FIELDS)


@pytest.fixture
def profile_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_module, "PROFILE_DIR", tmp_path)
    return tmp_path


@CASES
@given(values=st.dictionaries(st.sampled_from(FIELD_NAMES + ["train", "irm", "analysis", "extends", "colour"]), JSON_VALUES, max_size=4))
@example(values={"lr": math.nan})
@example(values={"seeds": [2**64]})
@example(values={"train": {"epochs": math.inf}})
def test_any_profile_fields_load_or_fail_naming_the_field(profile_dir, values):
    (profile_dir / "generated.yaml").write_text(yaml.safe_dump(values, allow_unicode=True))
    try:
        load_profile("generated")
    except CompanionError as err:
        assert str(profile_dir / "generated.yaml") in str(err), str(err)
        assert any(str(key) in str(err) for key in values) or "extends" in str(err), f"names no field: {err}"


@CASES
@given(text=st.text(max_size=80))
@example(text="seeds: [0]\nseeds: [1]\n")
@example(text="\ufeffseeds: [3]\n")
@example(text="")
def test_any_profile_text_loads_or_ends_in_a_named_error(profile_dir, text):
    path = write(profile_dir, "generated.yaml", text)
    fails_cleanly(lambda: load_profile("generated"), str(path))


@CASES
@given(text=(st.text(max_size=60) | JSON_VALUES.map(json.dumps)).filter(lambda t: "\x00" not in t))  # no NUL in an environment
@example(text='{"max_steps": 2, "max_steps": 3}')
@example(text='{"track_every": null}')
def test_any_overrides_variable_loads_or_ends_in_a_named_error(monkeypatch, text):
    monkeypatch.setenv(OVERRIDES_ENV, text)
    fails_cleanly(lambda: load_profile("smoke"), OVERRIDES_ENV)


@CASES
@given(argv=st.lists(st.sampled_from(["--profile", "--gpus", "smoke", "cpu", "nope", "0", "-1", "2", "x", "--other"]), max_size=4))
def test_the_command_line_parses_or_exits_with_a_usage_line(argv, capsys):
    try:
        profile, gpus = profile_and_gpus("./reproduce.sh plan", "test", argv)
    except SystemExit as exit_:
        assert exit_.code == 2 and "usage:" in capsys.readouterr().err
    else:
        assert profile.name in profile_module.available_profiles() and gpus >= 1


def test_none_for_an_optional_field_is_kept():
    assert load_profile("smoke").train.track_every == 1
    assert load_profile("smoke", track_every=None).train.track_every is None
    assert load_profile("smoke", data_limit=None).data_limit is None
    with pytest.raises(CompanionError, match="max_length"):
        load_profile("smoke", max_length=None)


def test_a_key_given_twice_is_an_error(profile_dir):
    (profile_dir / "twice.yaml").write_text("lr: 0.1\nlr: 0.2\n")
    with pytest.raises(CompanionError, match="given twice"):
        load_profile("twice")


def test_non_finite_numbers_are_errors():
    for field, value in (("lr", math.inf), ("nudge_generation_size", math.nan), ("alphas", [0.0, math.inf])):
        with pytest.raises(CompanionError, match=field):
            load_profile("smoke", **{field: value})
    assert AnalysisConfig(alphas=[0, 1]).alphas == (0.0, 1.0)
