"""The project's data sets: schema, validation, loading, and datasets by split.

Alignment rows (`data/alignment/alignment.jsonl`), one per (question, emotion):
    id, question, answer, emotion, text (= question + " " + rewrite, as the paper trained), split
Judge rows (`data/judge/judge.jsonl`): id, text, label, kind, split.
Judge evaluation rows (`data/judge_eval/`, fixed and hashed): tone.jsonl (id, text, label, source,
hard_case, split) and gate.jsonl (id, text, label, source, split); tone_fresh.jsonl and gate_fresh.jsonl
have the same fields, split "fresh" (held out from everything, read once); see data/judge_eval/README.md.

Prompts and tokenising live in prompts.py, the SQuAD generator in squad.py, the data sheet's
statistics in studies/data_sheet.py.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import datasets

from .environment import repo_root
from .errors import CompanionError
from .gate import GATE_LABELS
from .runs import squad_alignment_path

EMOTIONS = ("anger", "sadness", "joy", "neutral")
SPLITS = ("train", "validation", "test")
ALIGNMENT_FIELDS = ("id", "question", "answer", "emotion", "text", "split")
JUDGE_FIELDS = ("id", "text", "label", "kind", "split")
# The judge evaluation set: fixed before the judge or the fluency gate change, so it is read as
# committed; tests check each file against its SHA-256.
JUDGE_EVAL_SPLITS = ("dev", "test")
HARD_CASES = ("idiom", "sad-topic-neutral", "fragment", "numbers-or-list", "")
# The fresh files (built after the test split had been read three times, measured once) are read
# like tone / gate: same fields, labels and sources, but every row's split is "fresh".
JUDGE_EVAL_KIND = {"tone": "tone", "gate": "gate", "tone_fresh": "tone", "gate_fresh": "gate"}
JUDGE_EVAL_FILE_SPLITS = {"tone": JUDGE_EVAL_SPLITS, "gate": JUDGE_EVAL_SPLITS, "tone_fresh": ("fresh",), "gate_fresh": ("fresh",)}
_LABELS = {"tone": EMOTIONS, "gate": GATE_LABELS}
JUDGE_EVAL_LABELS = {which: _LABELS[kind] for which, kind in JUDGE_EVAL_KIND.items()}
_SOURCES = {
    "tone": ("alignment-test", "base-host-03", "quoted", "written"),
    "gate": ("irm-03", "base-host-03", "quoted", "written"),
}
JUDGE_EVAL_SOURCES = {which: _SOURCES[kind] for which, kind in JUDGE_EVAL_KIND.items()}
# Fields that must be non-empty strings; `text` (a gate text may be "") and `hard_case` ("" for
# none) are checked apart.
_FIELDS = {
    "tone": ("id", "text", "label", "source", "split"),
    "gate": ("id", "label", "source", "split"),
}
JUDGE_EVAL_FIELDS = {which: _FIELDS[kind] for which, kind in JUDGE_EVAL_KIND.items()}
JUDGE_EVAL_SHA256 = {
    "tone": "a1f2ee0c6b4247234a203d657d892632e8cd1952113867965023a2024509e24f",
    "gate": "e49d64d375b487ce8cab41e1ae3408f0e96673ea47df32799db5090372aad135",
    "tone_fresh": "565a3e216240bcdb40e14be2213499227d40a2b7ea2cdce1de5145afb83aa74e",
    "gate_fresh": "1b21d3668f6f06f7571a3a27dbc34c41494c883f19b0b166f4150ed9f79b9f4a",
}


class DataError(CompanionError, ValueError):
    """A data file is malformed; the message names the file, the line and the field."""


def alignment_path() -> Path:
    return repo_root() / "data" / "alignment" / "alignment.jsonl"


def judge_path() -> Path:
    return repo_root() / "data" / "judge" / "judge.jsonl"


def judge_eval_path(which: str) -> Path:
    """data/judge_eval/tone.jsonl, gate.jsonl, tone_fresh.jsonl or gate_fresh.jsonl."""
    if which not in JUDGE_EVAL_LABELS:
        raise DataError(f"judge evaluation set '{which}' unknown; choose one of {', '.join(JUDGE_EVAL_LABELS)}.")
    return repo_root() / "data" / "judge_eval" / f"{which}.jsonl"


class DuplicateKey(Exception):
    """A JSON object names one key twice (json keeps the last silently)."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object_pairs_hook that refuses a key given twice in one object."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """Read JSON Lines whose rows must carry non-empty string `fields`; line numbers start at 1."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Data files live in data/ of the repository (or pass a path).")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is allowed
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); save it as UTF-8.") from None
    rows = []
    # Lines end at "\n" only: a JSON string may hold other line separators (U+2028) unescaped.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}). Each line must be one JSON object.") from None
        except DuplicateKey as err:
            raise DataError(f"{path}, line {number}, field '{err.args[0]}': given twice in one row; keep one.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}.")
        for name in fields:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}, line {number}, field '{name}': missing or empty (every row needs {', '.join(fields)}).")
        row["_line"] = number
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows. The file is empty.")
    return rows


def _check_ids(path: Path, rows: list[dict]) -> None:
    seen: dict[str, int] = {}
    for row in rows:
        if row["id"] in seen:
            raise DataError(f"{path}, line {row['_line']}, field 'id': duplicate id '{row['id']}' (first on line {seen[row['id']]}).")
        seen[row["id"]] = row["_line"]


def _check_choice(path: Path, row: dict, name: str, choices: tuple[str, ...]) -> None:
    if row[name] not in choices:
        raise DataError(f"{path}, line {row['_line']}, field '{name}': '{row[name]}' is not one of {', '.join(choices)}.")


def validate_alignment(rows: list[dict], path: Path) -> list[dict]:
    """Check choices, ids, the text = question + " " + rewrite rule, and that no question
    appears in two splits."""
    _check_ids(path, rows)
    split_of: dict[str, tuple[str, int]] = {}
    for row in rows:
        _check_choice(path, row, "emotion", EMOTIONS)
        _check_choice(path, row, "split", SPLITS)
        if not row["text"].startswith(row["question"] + " ") or not row["text"][len(row["question"]) + 1:].strip():
            raise DataError(f"{path}, line {row['_line']}, field 'text': must be the question, a space, then the rewritten answer.")
        first = split_of.setdefault(row["question"], (row["split"], row["_line"]))
        if first[0] != row["split"]:
            raise DataError(
                f"{path}, line {row['_line']}, field 'split': question '{row['question']}' is in '{row['split']}' here but in "
                f"'{first[0]}' on line {first[1]}; a question must stay in one split so test questions are never trained on."
            )
    return rows


def validate_judge(rows: list[dict], path: Path) -> list[dict]:
    _check_ids(path, rows)
    for row in rows:
        _check_choice(path, row, "label", EMOTIONS)
        _check_choice(path, row, "split", SPLITS)
    return rows


def validate_judge_eval(rows: list[dict], path: Path, which: str) -> list[dict]:
    """Check ids, labels, sources, splits ("fresh" in the fresh files) and (tone) hard cases; a gate
    text may be empty but must be a string."""
    _check_ids(path, rows)
    for row in rows:
        if not isinstance(row.get("text"), str):
            raise DataError(f"{path}, line {row['_line']}, field 'text': missing or not a string.")
        _check_choice(path, row, "label", JUDGE_EVAL_LABELS[which])
        _check_choice(path, row, "source", JUDGE_EVAL_SOURCES[which])
        _check_choice(path, row, "split", JUDGE_EVAL_FILE_SPLITS[which])
        if JUDGE_EVAL_KIND[which] == "tone":
            if not isinstance(row.get("hard_case"), str):
                raise DataError(f"{path}, line {row['_line']}, field 'hard_case': missing or not a string (\"\" for none).")
            if row["hard_case"] not in HARD_CASES:
                raise DataError(f"{path}, line {row['_line']}, field 'hard_case': '{row['hard_case']}' is not one of "
                                f"{', '.join(repr(c) for c in HARD_CASES)}.")
    return rows


def rewrite_of(row: dict) -> str:
    """The rewritten answer inside an alignment row's text."""
    return row["text"][len(row["question"]) + 1:]


def load_alignment(path: str | Path | None = None) -> list[dict]:
    """All alignment rows, validated."""
    path = Path(path or alignment_path())
    return validate_alignment(read_jsonl(path, ALIGNMENT_FIELDS), path)


def load_judge(path: str | Path | None = None) -> list[dict]:
    """All judge rows, validated."""
    path = Path(path or judge_path())
    return validate_judge(read_jsonl(path, JUDGE_FIELDS), path)


def load_judge_eval(which: str, path: str | Path | None = None) -> list[dict]:
    """The judge evaluation rows of `which` ("tone", "gate", "tone_fresh" or "gate_fresh"), validated."""
    default = judge_eval_path(which)  # refuses an unknown `which`
    path = Path(path or default)
    return validate_judge_eval(read_jsonl(path, JUDGE_EVAL_FIELDS[which]), path, which)


def as_datasets(rows: list[dict], emotion: str | None = None, limit: int | None = None) -> datasets.DatasetDict:
    """Rows (optionally of one emotion, at most `limit` per split) as a DatasetDict by split."""
    if emotion is not None and emotion not in EMOTIONS:
        raise DataError(f"emotion '{emotion}' unknown; choose one of {', '.join(EMOTIONS)}.")
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if emotion is None or row.get("emotion", row.get("label")) == emotion:
            by_split[row["split"]].append({k: v for k, v in row.items() if not k.startswith("_")})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(by_split[split][:limit] if limit is not None else by_split[split])
        for split in SPLITS if by_split[split]
    })


def assign_split(key: str, seed: int = 42, fractions: tuple[float, float] = (0.8, 0.9)) -> str:
    """A fixed split for a question: train / validation / test at about 80 / 10 / 10.

    Hash-based, so a question keeps its split whatever else is in the file.
    """
    value = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    return "train" if value < fractions[0] else "validation" if value < fractions[1] else "test"


def profile_rows(profile) -> list[dict]:
    """The alignment rows a profile trains on: the curated set, or the SQuAD-derived set that
    notebook 01 builds for the paper profile."""
    if profile.data == "curated":  # else "squad": Profile refuses any other value
        return load_alignment()
    path = squad_alignment_path(profile)
    if not path.exists():
        raise DataError(f"{path} does not exist yet: run notebooks/01_data.ipynb with profile '{profile.name}' first; it builds the SQuAD data.")
    return load_alignment(path)
