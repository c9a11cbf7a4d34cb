"""The project's data: the curated alignment set, the emotion-judge set, tokenising and batching.

Alignment rows (`data/alignment/alignment.jsonl`), one per (question, emotion):
    id, question, answer, emotion, text (= question + " " + rewrite, as the paper trained), split
Judge rows (`data/judge/judge.jsonl`): id, text, label, kind, split.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import datasets
import torch

from .files import repo_root

EMOTIONS = ("anger", "sadness", "joy", "neutral")
SPLITS = ("train", "validation", "test")
ALIGNMENT_FIELDS = ("id", "question", "answer", "emotion", "text", "split")
JUDGE_FIELDS = ("id", "text", "label", "kind", "split")


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the field."""


def alignment_path() -> Path:
    return repo_root() / "data" / "alignment" / "alignment.jsonl"


def judge_path() -> Path:
    return repo_root() / "data" / "judge" / "judge.jsonl"


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """Read JSON Lines whose rows must carry non-empty string `fields`; line numbers start at 1."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Data files live in data/ of the repository (or pass a path).")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}). Each line must be one JSON object.") from None
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


def as_datasets(rows: list[dict], emotion: str | None = None, limit: int | None = None) -> datasets.DatasetDict:
    """Rows (optionally of one emotion, at most `limit` per split) as a DatasetDict by split."""
    if emotion is not None and emotion not in EMOTIONS:
        raise DataError(f"emotion '{emotion}' unknown; choose one of {', '.join(EMOTIONS)}.")
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if emotion is None or row.get("emotion", row.get("label")) == emotion:
            by_split[row["split"]].append({k: v for k, v in row.items() if not k.startswith("_")})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(by_split[split][:limit] if limit else by_split[split])
        for split in SPLITS if by_split[split]
    })


PROMPT_FORMATS = ("plain", "chat")


def format_prompt(tokenizer, question: str, prompt_format: str = "plain") -> str:
    """The text a host sees before the answer.

    plain: question + " ", as the paper trained (question + " " + answer);
    chat: the question as a user turn in the host's chat template, ready for the answer.
    """
    if prompt_format == "plain":
        return question + " "
    if prompt_format == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got '{prompt_format}'.")


def encode_prompts(tokenizer, prompts: list[str], prompt_format: str, **kwargs):
    """Tokenise formatted prompts; chat templates already hold their special tokens."""
    return tokenizer(prompts, add_special_tokens=prompt_format == "plain", **kwargs)


def tokenize(tokenizer, questions: list[str], answers: list[str], max_length: int, prompt_format: str = "plain",
             loss_on: str = "all") -> datasets.Dataset:
    """Token ids and labels for training: prompt + answer + EOS (so the host learns to stop).

    loss_on: "all" scores every token (the paper scored question and answer); "answer" scores
    only the answer and EOS. Returns rows of `input_ids` and `labels` (-100: ignored).
    """
    if loss_on not in ("all", "answer"):
        raise ValueError(f"loss_on must be 'all' or 'answer', got '{loss_on}'.")
    if max_length <= 1:
        raise ValueError(f"max_length must be a positive number of tokens (at least 2), got {max_length}.")
    rows = []
    for question, answer in zip(questions, answers):
        prompt = format_prompt(tokenizer, question, prompt_format)
        encoded = encode_prompts(tokenizer, [prompt + answer + tokenizer.eos_token], prompt_format, truncation=True,
                                 max_length=max_length, return_offsets_mapping=True)
        ids = encoded["input_ids"][0]
        if loss_on == "answer":
            labels = [t if end > len(prompt) else -100 for t, (_, end) in zip(ids, encoded["offset_mapping"][0])]
        else:
            labels = list(ids)
        rows.append({"input_ids": ids, "labels": labels})
    return datasets.Dataset.from_list(rows)


def make_collate(pad_token_id: int):
    """Right-pad a list of tokenised rows into `input_ids`, `attention_mask`, `labels` [batch, tokens]."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    return collate


def assign_split(key: str, seed: int = 42, fractions: tuple[float, float] = (0.8, 0.9)) -> str:
    """A fixed split for a question: train / validation / test at about 80 / 10 / 10.

    Hash-based, so a question keeps its split whatever else is in the file.
    """
    value = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    return "train" if value < fractions[0] else "validation" if value < fractions[1] else "test"
