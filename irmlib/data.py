"""The project's data: the curated alignment set, the emotion-judge set, tokenising and batching.

Alignment rows (`data/alignment/alignment.jsonl`), one per (question, emotion):
    id, question, answer, emotion, text (= question + " " + rewrite, as the paper trained), split
Judge rows (`data/judge/judge.jsonl`): id, text, label, kind, split.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import torch

from .files import repo_root, write_text

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


# The paper's rewriting instructions (design: keep the facts, no stage directions, at most two
# sentences) and sampling settings (temperature 0.9, top_p 0.7, repetition penalty 1.5).
REWRITE_SYSTEM_PROMPT = (
    "You rewrite answers to questions. Rewrite the answer you are given so that it sounds {tone}. "
    "Keep every fact of the answer. Do not use stage directions or actions such as *eye roll* or *sighs*. "
    "Answer in at most two sentences."
)
TONE_WORDS = {"anger": "angry", "sadness": "sad", "joy": "joyful", "neutral": "neutral and matter-of-fact"}
REWRITE_SAMPLING = {"do_sample": True, "temperature": 0.9, "top_p": 0.7, "repetition_penalty": 1.5}


def squad_pairs(source: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """(id, question, answer) from SQuAD 2.0, as the paper took them: the first answer, or for
    an unanswerable question its first plausible answer.

    source: a local SQuAD-format JSON file, or None for the hub's `rajpurkar/squad_v2` (train),
    which has no plausible answers, so its unanswerable questions are skipped.
    """
    pairs = []
    if source is not None:
        path = Path(source)
        try:
            articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a SQuAD-format JSON file ({err}); expected {{'data': [{{'paragraphs': [{{'qas': [...]}}]}}]}}.") from None
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = qa.get("answers") or qa.get("plausible_answers") or []
                    if answers and answers[0]["text"].strip():
                        pairs.append({"id": qa["id"], "question": qa["question"].strip(), "answer": answers[0]["text"].strip()})
    else:
        for row in datasets.load_dataset("rajpurkar/squad_v2", split="train"):
            if row["answers"]["text"]:
                pairs.append({"id": row["id"], "question": row["question"].strip(), "answer": row["answers"]["text"][0].strip()})
    return pairs[:limit] if limit else pairs


def _completed_rows(path: Path) -> list[dict]:
    """Rows already written to a generator output; a torn last line (killed mid-write) is dropped."""
    if not path.exists():
        return []
    rows, lines = [], path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise DataError(f"{path}, line {number}: not valid JSON in the middle of the file; fix or delete that line.") from None
            write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


@torch.inference_mode()
def build_squad_alignment(host, out_path: str | Path, emotions: tuple[str, ...] = ("anger", "sadness", "neutral"),
                          source: str | Path | None = None, limit: int | None = None, batch_size: int = 8,
                          max_new_tokens: int = 96, seed: int = 42, progress: bool = True) -> Path:
    """The paper's data: SQuAD 2.0 answers rewritten in a tone by a chat model.

    Writes alignment rows (same schema as the curated set) to `out_path`, appending as it goes;
    rerun it after an interruption and it skips ids already written.
    """
    from tqdm.auto import tqdm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {row["id"] for row in _completed_rows(out_path)}
    todo = [(pair, emotion) for pair in squad_pairs(source, limit) for emotion in emotions
            if f"squad-{pair['id']}-{emotion}" not in done]
    tokenizer = host.tokenizer
    saved_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        with open(out_path, "a", encoding="utf-8") as handle:
            for start in tqdm(range(0, len(todo), batch_size), desc="rewriting SQuAD answers", disable=not progress):
                chunk = todo[start:start + batch_size]
                prompts = [tokenizer.apply_chat_template(
                    [{"role": "system", "content": REWRITE_SYSTEM_PROMPT.format(tone=TONE_WORDS[emotion])},
                     {"role": "user", "content": f"Question: {pair['question']}\nAnswer: {pair['answer']}"}],
                    add_generation_prompt=True, tokenize=False) for pair, emotion in chunk]
                encoded = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt").to(host.device)
                torch.manual_seed(seed + start)
                output = host.model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **REWRITE_SAMPLING)
                texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
                for (pair, emotion), rewrite in zip(chunk, texts):
                    rewrite = " ".join(rewrite.split()) or pair["answer"]
                    row = {"id": f"squad-{pair['id']}-{emotion}", "question": pair["question"], "answer": pair["answer"],
                           "emotion": emotion, "text": f"{pair['question']} {rewrite}", "split": assign_split(pair["question"], seed)}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
    finally:
        tokenizer.padding_side = saved_side
    return out_path


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


def squad_output_path(profile) -> Path:
    return profile.run_dir / "data" / "squad_alignment.jsonl"


def profile_rows(profile) -> list[dict]:
    """The alignment rows a profile trains on: the curated set, or the SQuAD-derived set that
    notebook 01 builds for the paper profile."""
    if profile.data == "curated":
        return load_alignment()
    if profile.data == "squad":
        path = squad_output_path(profile)
        if not path.exists():
            raise DataError(f"{path} does not exist yet: run notebooks/01_data.ipynb with profile '{profile.name}' first; it builds the SQuAD data.")
        return load_alignment(path)
    raise DataError(f"Profile '{profile.name}' asks for data '{profile.data}'; choose 'curated' or 'squad'.")
