"""A notebook's claims and their verdicts: "held", "did not hold" or "not tested", each with the
numbers it rests on. The rules that give a verdict live in the study modules (irmlib.studies),
tested; a notebook prints what they return."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

HELD, NOT_HELD, NOT_TESTED = "held", "did not hold", "not tested"
VERDICTS = (HELD, NOT_HELD, NOT_TESTED)


def verdict(held: bool | None) -> str:
    """HELD for True, NOT_HELD for False, NOT_TESTED for None (the data could not tell)."""
    return NOT_TESTED if held is None else HELD if held else NOT_HELD


@dataclass(frozen=True)
class Claim:
    """One claim of a notebook: its number, what it says, its verdict and the evidence, in words
    with the measured numbers."""

    number: str
    statement: str
    verdict: str
    evidence: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}.")

    def __str__(self) -> str:
        return f"({self.number}) {self.statement}: {self.verdict}. {self.evidence}"


def claims_table(claims: list[Claim]) -> pd.DataFrame:
    """The claims as a table (claim, verdict, evidence), indexed by number, for metrics.json."""
    return pd.DataFrame([{"claim": c.statement, "verdict": c.verdict, "evidence": c.evidence} for c in claims],
                        index=[c.number for c in claims])


def in_order(claims: list[Claim]) -> list[Claim]:
    """Claims sorted by their leading number ("3, set b" after "3, a", before "4, arm A"),
    claims of one number kept in the order given."""
    return sorted(claims, key=lambda claim: int(claim.number.split(",")[0]))


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 run", "2 runs": a count with its noun."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def fmt(value: float, digits: int = 2, signed: bool = False) -> str:
    """A number for a sentence ("+0.12" with `signed`): "n/a" where it is NaN or None (too few
    runs, no scored text)."""
    if value is None or value != value:
        return "n/a"
    return f"{value:{'+' if signed else ''}.{digits}f}"
