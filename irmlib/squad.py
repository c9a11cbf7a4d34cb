"""The paper's data generator: SQuAD 2.0 answers rewritten in a tone by a chat model.

The build appends alignment rows (the curated set's schema) as it goes and resumes after an
interruption. It samples in fixed batches: per emotion, consecutive runs of `batch_size`
SQuAD pairs in source order, each batch seeded from its first row's id. A resumed build
therefore regenerates exactly the batches an uninterrupted one would, with the same seeds, and
writes the same file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from .data import DataError, DuplicateKey, assign_split, unique_keys
from .atomic import write_text
from .prompts import left_padding

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
        pairs = _local_squad_pairs(Path(source))
    else:
        for row in datasets.load_dataset("rajpurkar/squad_v2", split="train"):
            if row["answers"]["text"]:
                pairs.append({"id": row["id"], "question": row["question"].strip(), "answer": row["answers"]["text"][0].strip()})
    return pairs[:limit] if limit is not None else pairs


def _squad_field(value, kind: type, where: str, path: Path):
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = {list: "a list", dict: "an object", str: "a string"}[kind]
        raise DataError(f"{path}, {where}: expected {expected}, got {type(value).__name__}. A SQuAD-format file is "
                        f"{{'data': [{{'paragraphs': [{{'qas': [{{'id', 'question', 'answers': [{{'text'}}]}}]}}]}}]}}.")
    return value


def _local_squad_pairs(path: Path) -> list[dict]:
    """(id, question, answer) of a local SQuAD-format JSON file; DataError naming the file and
    the place (e.g. data[0].paragraphs[2].qas[1].question) for anything else."""
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err}).") from None
    except DuplicateKey as err:
        raise DataError(f"{path}: the key '{err.args[0]}' is given twice in one object.") from None
    pairs = []
    articles = _squad_field(_squad_field(document, dict, "top level", path).get("data"), list, "data", path)
    for a, article in enumerate(articles):
        paragraphs = _squad_field(_squad_field(article, dict, f"data[{a}]", path).get("paragraphs"), list, f"data[{a}].paragraphs", path)
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            for q, qa in enumerate(_squad_field(_squad_field(paragraph, dict, where, path).get("qas"), list, f"{where}.qas", path)):
                at = f"{where}.qas[{q}]"
                _squad_field(qa, dict, at, path)
                answers = qa.get("answers") or qa.get("plausible_answers") or []
                _squad_field(answers, list, f"{at}.answers", path)
                if not answers:
                    continue  # no answer, not even a plausible one: the paper's build skips it
                text = _squad_field(_squad_field(answers[0], dict, f"{at}.answers[0]", path).get("text"), str, f"{at}.answers[0].text", path)
                question = _squad_field(qa.get("question"), str, f"{at}.question", path)
                qid = _squad_field(qa.get("id"), str, f"{at}.id", path)
                if text.strip() and question.strip():
                    pairs.append({"id": qid, "question": question.strip(), "answer": text.strip()})
    return pairs


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


def row_id(pair: dict, emotion: str) -> str:
    """The alignment id of one SQuAD pair rewritten in one emotion."""
    return f"squad-{pair['id']}-{emotion}"


def rewrite_batches(pairs: list[dict], emotions: tuple[str, ...], batch_size: int) -> list[list[tuple[dict, str]]]:
    """The whole build as fixed batches of (pair, emotion): per emotion, consecutive runs of
    `batch_size` pairs. Boundaries depend only on the pairs' order (a shorter `limit` changes
    only the last batch), never on what an earlier run already wrote."""
    return [[(pair, emotion) for pair in pairs[start:start + batch_size]]
            for emotion in emotions for start in range(0, len(pairs), batch_size)]


def batch_seed(seed: int, first_id: str) -> int:
    """The sampling seed of the batch that starts with row `first_id` (60 bits of a hash)."""
    return int(hashlib.sha256(f"{seed}:{first_id}".encode()).hexdigest()[:15], 16)


def _rewrite(host, batch: list[tuple[dict, str]], seed: int, max_new_tokens: int) -> list[str]:
    """Sample one rewrite per (pair, emotion) of `batch` in one left-padded generate call."""
    tokenizer = host.tokenizer
    prompts = [tokenizer.apply_chat_template(
        [{"role": "system", "content": REWRITE_SYSTEM_PROMPT.format(tone=TONE_WORDS[emotion])},
         {"role": "user", "content": f"Question: {pair['question']}\nAnswer: {pair['answer']}"}],
        add_generation_prompt=True, tokenize=False) for pair, emotion in batch]
    with left_padding(tokenizer):
        encoded = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt").to(host.device)
    torch.manual_seed(seed)
    output = host.model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **REWRITE_SAMPLING)
    return tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.inference_mode()
def build_squad_alignment(host, out_path: str | Path, emotions: tuple[str, ...] = ("anger", "sadness", "neutral"),
                          source: str | Path | None = None, limit: int | None = None, batch_size: int = 8,
                          max_new_tokens: int = 96, seed: int = 42, progress: bool = True) -> Path:
    """The paper's data: SQuAD 2.0 answers rewritten in a tone by a chat model.

    Writes alignment rows (same schema as the curated set) to `out_path`, one batch at a time;
    rerun it with the same arguments after an interruption and it writes only the missing rows,
    sampled exactly as an uninterrupted build samples them.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {row["id"] for row in _completed_rows(out_path)}
    with open(out_path, "a", encoding="utf-8") as handle:
        for batch in tqdm(rewrite_batches(squad_pairs(source, limit), emotions, batch_size), desc="rewriting SQuAD answers",
                          disable=not progress):
            if all(row_id(pair, emotion) in done for pair, emotion in batch):
                continue
            # A batch half written before a kill is sampled again whole (same rows, same seed, so the
            # same texts) and only its missing rows are added.
            rewrites = _rewrite(host, batch, batch_seed(seed, row_id(*batch[0])), max_new_tokens)
            lines = []
            for (pair, emotion), rewrite in zip(batch, rewrites):
                if row_id(pair, emotion) in done:
                    continue
                rewrite = " ".join(rewrite.split()) or pair["answer"]
                row = {"id": row_id(pair, emotion), "question": pair["question"], "answer": pair["answer"], "emotion": emotion,
                       "text": f"{pair['question']} {rewrite}", "split": assign_split(pair["question"], seed)}
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            handle.write("".join(lines))
            handle.flush()
    return out_path
