"""The fluency gate: whether one generated text is language a tone can be read from.

Each text gets one label from what it is made of; these rules need no model. Where a host is given
(the base host: the embedded SmolLM2-135M-Instruct, the one the thresholds were set with), its
perplexity adds a word-order rule, and the judge adds the last one (`irmlib.judge.EmotionJudge.gate`:
word salad, read by the host's states):
- `too_short`: fewer than `min_words` words (whitespace-separated), and no symbol or comma run;
- `degenerate`: text a reader would not call language: punctuation only, a symbol run
  ("999,,,,,,,,,,,,", "0000000000000"), two commas with only spaces between, an n-gram of one to three words repeated
  `max_repeats` times in a row ("the of the of the of the of"), one word making up
  `top_word_share` of a text of `top_word_min_words` words or more, or misplaced function words
  (a text opening with a comma or full stop, an article followed by punctuation or by a word
  an article never precedes ("the of", "the is"), a text ending on an article ("... in the."), or
  on a conjunction followed by ".", "!" or "?", a function word glued to a digit ("in2"));
  with a host, also a text of `order_min_words` words or more whose own word order the host finds
  hardly likelier than shuffled orders of the same words: its mean next-token negative
  log-likelihood (NLL, nats per token) is less than `order_min_gain` below the mean NLL of
  `order_shuffles` shuffles of its words (`order_gain`). Word salad ("3 chambers, heart beating a
  chamber, blood.") reads about as well shuffled; a sentence, a list or a phrase of rare words reads
  much worse. Shorter texts are left to the other rules: a fluent five-word exclamation can read
  almost as well shuffled;
- `fluent`: everything else, right or wrong.

The rules, the word-order rule included, were set on the dev split of data/judge_eval/gate.jsonl and are measured on its test
split by `irmlib.studies.data_sheet.gate_eval` (data/judge_eval/README.md). A set of texts is
degenerate when more than half are too short or more than `max_degenerate_share` are degenerate
(`irmlib.scoring.text_quality`). Perplexity is part of the gate where a host is given: the
measured gate of notebook 01 and the gate of every scored generation (`irmlib.scoring.score_generations`)
use the embedded host the judge reads with; without a host the gate is the rules alone (plus the
judge's probe where the judge is used), and says so (`gate_eval`'s `perplexity_host`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path
from .host import cache_dir

if TYPE_CHECKING:
    from .host import Host

GATE_LABELS = ("fluent", "degenerate", "too_short")

# Words an article never precedes in English.
_ARTICLES = {"the", "a", "an"}
_NOT_AFTER_ARTICLE = _ARTICLES | {"of", "is", "was", "are", "were", "in", "to", "and", "or", "that", "on", "at", "by",
                                  "for", "from", "with"}
# A sentence may end on a preposition ("what it is made of."), not on an article or a conjunction.
_NOT_LAST = _ARTICLES | {"and", "or"}
_SYMBOL_RUN = re.compile(r"(\S{1,4}?)\1{5,}")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters (any alphabet) and digits


@dataclass(frozen=True)
class GateRules:
    """The gate's thresholds (the profile's `analysis:` section holds them)."""

    min_words: int = 2  # fewer whitespace-separated words: too_short
    symbol_run_chars: int = 12  # a unit of 1-4 non-space characters repeated 6 times or more, this long
    max_repeats: int = 4  # an n-gram (n = 1..3) repeated this many times in a row
    top_word_share: float = 0.4  # one word's share of the words ...
    top_word_min_words: int = 8  # ... in a text of at least this many words
    salad_probability: float = 0.95  # the judge's word-salad probe: degenerate at this probability ...
    salad_min_words: int = 4  # ... in a text of at least this many words (short answers have few orders)
    order_min_gain: float = 0.5  # with a host: degenerate when shuffling the words raises the NLL by less (nats/token) ...
    order_min_words: int = 6  # ... in a text of at least this many words
    order_shuffles: int = 4  # shuffles of the words whose mean NLL the text's own is compared with
    max_degenerate_share: float = 0.25  # a set is degenerate above this share of degenerate texts


def _symbol_run(text: str, min_chars: int) -> bool:
    return any(len(match.group(0)) >= min_chars for match in _SYMBOL_RUN.finditer(text))


def _repeated_ngram(words: list[str], repeats: int) -> bool:
    for n in (1, 2, 3):
        for start in range(len(words) - n * repeats + 1):
            gram = words[start:start + n]
            if all(words[start + k * n:start + (k + 1) * n] == gram for k in range(1, repeats)):
                return True
    return False


def _misplaced_function_word(text: str) -> str | None:
    """Which function word is out of place, if one is: what word salad ("0 gold the is symbol
    gold", ". gold chemical is gold", "903 on, only n of and in2 the.") shows and text does not."""
    if re.match(r"\s*[,.?;]", text):
        return "opens with punctuation"
    if re.search(r"\b(?:the|in|of|and|to)\d", text):
        return "function word glued to a digit"
    tokens = text.split()
    for this, following in zip(tokens, tokens[1:] + [""]):
        # "A" is left out: "A: Paris", "Vitamin A, ..." are answers, not articles.
        if this.lower() in ("the", "an") or this == "a":
            if not following:
                return f"ends on '{this}'"
            # The whole next word, so "the as-yet" and "the IT department" stay text.
            if following.strip(".,;:!?\"'()") in _NOT_AFTER_ARTICLE:
                return f"'{this} {following}'"
        if this.rstrip(",;") != this and this.rstrip(",;").lower() in ("the", "an"):
            return f"'{this}' before punctuation"
    last = re.sub(r"[.!?]+$", "", tokens[-1]) if tokens else ""
    if last != tokens[-1] and last.lower() in _NOT_LAST and last != "A":
        return f"ends on '{last}'"
    return None


def gate_reason(text: str, rules: GateRules = GateRules()) -> tuple[str, str]:
    """One text's label ("fluent", "degenerate" or "too_short") and the rule that gave it."""
    text = str(text)
    if _symbol_run(text, rules.symbol_run_chars):
        return "degenerate", "symbol run"
    if ",," in text.replace(" ", ""):
        return "degenerate", "comma run"
    if len(text.split()) < rules.min_words:
        return "too_short", f"under {rules.min_words} words"
    words = _WORD.findall(text.lower())
    if not words:
        return "degenerate", "punctuation only"
    if _repeated_ngram(words, rules.max_repeats):
        return "degenerate", f"an n-gram {rules.max_repeats} times in a row"
    misplaced = _misplaced_function_word(text)
    if misplaced:
        return "degenerate", misplaced
    top = max(words.count(w) for w in set(words)) / len(words)
    if len(words) >= rules.top_word_min_words and top >= rules.top_word_share:
        return "degenerate", f"one word is {top:.0%} of the words"
    return "fluent", ""


def shuffled_words(text: str, rng: random.Random) -> str:
    """The text's whitespace-separated words in another order (reversed if no shuffle differs)."""
    words = text.split()
    for _ in range(10):
        order = rng.sample(words, len(words))
        if order != words:
            return " ".join(order)
    return " ".join(reversed(words))


def _document_start(tokenizer) -> int:
    """The token a document starts after in the host's training: "<|endoftext|>" where the
    vocabulary has it (SmolLM2), else the tokenizer's BOS (Llama's "<s>"), else its EOS."""
    start = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if start is None or start == tokenizer.unk_token_id:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return start


def text_nll(host: "Host", texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Each text's mean next-token negative log-likelihood under `host` (nats per token; the log of
    its perplexity), every token predicted from the document start and the tokens before it, with
    no prompt and no hook: one plain forward pass per batch. Returns [n]; NaN for an empty text.

    Texts read before by the same host (its name, dtype and device type, this torch) come from a
    cache on disk (`_NllCache`): the gate reads the same evaluation texts and base-host answers in
    several notebooks."""
    cache = _NllCache(host)
    result = np.asarray([cache.get(str(text)) for text in texts], dtype=float)
    missing = [i for i in range(len(texts)) if np.isnan(result[i])]
    if missing:
        result[missing] = text_nll_uncached(host, [str(texts[i]) for i in missing], batch_size)
        cache.update({str(texts[i]): result[i] for i in missing})
    return result


class _NllCache:
    """{text: NLL} of one host, in one JSON file under the cache directory, keyed by a hash of each
    text. Written atomically after merging with what another process may have written meanwhile:
    a lost entry is read again, a torn file is never read."""

    def __init__(self, host: "Host"):
        key = json.dumps([host.name, str(host.model.dtype), host.device.type, torch.__version__, _document_start(host.tokenizer)])
        self.path = cache_dir() / "gate" / f"nll-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        self.values = self._load()

    def _load(self) -> dict[str, float]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent or damaged: the texts are read again
            return {}

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, text: str) -> float:
        value = self.values.get(self._key(text))
        return float("nan") if value is None else float(value)

    def update(self, read: dict[str, float]) -> None:
        fresh = {self._key(text): float(value) for text, value in read.items() if np.isfinite(value)}  # an empty text stays NaN
        if not fresh:
            return
        self.values = self._load() | self.values | fresh
        with atomic_path(self.path) as temporary:
            temporary.write_text(json.dumps(self.values))


def text_nll_uncached(host: "Host", texts: list[str], batch_size: int = 32) -> np.ndarray:
    """`text_nll` without the cache: [n] mean next-token NLL under `host`, NaN for an empty text."""
    tokenizer, start = host.tokenizer, _document_start(host.tokenizer)
    encoded = [[start] + tokenizer(str(text), add_special_tokens=False)["input_ids"] for text in texts]
    result = np.full(len(texts), np.nan)
    order = np.argsort([len(ids) for ids in encoded], kind="stable")  # similar lengths batch with little padding
    with torch.no_grad():
        for first in range(0, len(texts), batch_size):
            chosen = [i for i in order[first:first + batch_size] if len(encoded[i]) > 1]
            if not chosen:
                continue
            width = max(len(encoded[i]) for i in chosen)
            ids = torch.full((len(chosen), width), start, dtype=torch.long)
            mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for row, i in enumerate(chosen):
                ids[row, :len(encoded[i])], mask[row, :len(encoded[i])] = torch.tensor(encoded[i]), 1
            logits = host.model(input_ids=ids.to(host.device), attention_mask=mask.to(host.device)).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:].to(host.device), reduction="none").cpu()
            scored = mask[:, 1:].float()
            result[chosen] = ((nll * scored).sum(1) / scored.sum(1)).numpy()
    return result


def order_gain(host: "Host", texts: list[str], shuffles: int = GateRules.order_shuffles) -> np.ndarray:
    """How much likelier `host` finds each text's own word order than shuffled orders of its
    words: the mean `text_nll` of `shuffles` shuffles (seeded by the text, so a text always gets
    the same ones) minus the text's own. Nats per token; near 0 or below for word salad."""
    texts = [str(text) for text in texts]
    shuffled = [shuffled_words(text, random.Random(int(hashlib.sha256(f"{k}:{text}".encode()).hexdigest()[:8], 16)))
                for k in range(shuffles) for text in texts]
    nll_shuffled = text_nll(host, shuffled).reshape(shuffles, len(texts)).mean(0)
    return nll_shuffled - text_nll(host, texts)


def gate_text(text: str, rules: GateRules = GateRules()) -> str:
    """One text's label: "fluent", "degenerate" or "too_short" (see the module docstring)."""
    return gate_reason(text, rules)[0]


def gate_texts(texts: Iterable[str], rules: GateRules = GateRules(), host: "Host | None" = None) -> list[str]:
    """[texts] -> one gate label per text: the rules, then, where `host` is given, the word-order
    rule on the texts they call fluent (see the module docstring)."""
    texts = [str(text) for text in texts]
    labels = [gate_text(text, rules) for text in texts]
    if host is not None:
        read = [i for i, (text, label) in enumerate(zip(texts, labels))
                if label == "fluent" and len(text.split()) >= rules.order_min_words]
        if read:
            gains = order_gain(host, [texts[i] for i in read], rules.order_shuffles)
            for i, gain in zip(read, gains):
                if gain < rules.order_min_gain:
                    labels[i] = "degenerate"
    return labels
