"""The fluency gate: whether one generated text is language a tone can be read from.

Each text gets one label from what it is made of; these rules need no model, and the judge adds
the last one (`irmlib.judge.EmotionJudge.gate`: word salad, read by the host):
- `too_short`: fewer than `min_words` words (whitespace-separated), and no symbol or comma run;
- `degenerate`: text a reader would not call language: punctuation only, a symbol run
  ("999,,,,,,,,,,,,", "0000000000000"), two commas with only spaces between, an n-gram of one to three words repeated
  `max_repeats` times in a row ("the of the of the of the of"), one word making up
  `top_word_share` of a text of `top_word_min_words` words or more, or misplaced function words
  (a text opening with a comma or full stop, an article followed by punctuation or by a word
  an article never precedes ("the of", "the is"), a text ending on an article ("... in the."), or
  on a conjunction followed by ".", "!" or "?", a function word glued to a digit ("in2"));
- `fluent`: everything else, right or wrong.

The rules were set on the dev split of data/judge_eval/gate.jsonl and are measured on its test
split by `irmlib.studies.data_sheet.gate_eval` (data/judge_eval/README.md). A set of texts is
degenerate when more than half are too short or more than `max_degenerate_share` are degenerate
(`irmlib.scoring.text_quality`). Perplexity is not part of the gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

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


def gate_text(text: str, rules: GateRules = GateRules()) -> str:
    """One text's label: "fluent", "degenerate" or "too_short" (see the module docstring)."""
    return gate_reason(text, rules)[0]


def gate_texts(texts: Iterable[str], rules: GateRules = GateRules()) -> list[str]:
    """[texts] -> one gate label per text."""
    return [gate_text(text, rules) for text in texts]
