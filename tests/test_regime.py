"""Notebook 07's regime map (irmlib.studies.regime): its cells, the long cell's rate, the
recommendation and the claims, on made-up cell tables."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from irmlib.claims import HELD, NOT_HELD, NOT_TESTED
from irmlib.profile import ProfileError, load_profile
from irmlib.studies import regime


def by_number(claims) -> dict:
    return {claim.number: claim.verdict for claim in claims}


def test_the_regime_profile_maps_twelve_cells_with_the_stated_schedules():
    profile = load_profile("regime")
    cells = regime.regime_cells(profile)
    assert len(cells) == 12 and len({c.variant for c in cells}) == 12 and len({c.name for c in cells}) == 12
    assert profile.notebooks == ("07_regime",)
    stable = [c for c in cells if c.schedule == "stable"]
    plain = [c for c in cells if c.schedule == "plain"]
    assert sorted({c.lr for c in stable}) == [1e-4, 3e-4, 1e-3, 3e-3] and sorted({c.lr for c in plain}) == [1e-3, 3e-3]
    for cell in stable:
        train = cell.profile.train
        assert (train.warmup_steps, train.decay, train.clip_grad_norm, train.max_steps) == (15, "cosine", 1.0, 150)
    for cell in plain:
        train = cell.profile.train
        assert (train.warmup_steps, train.decay, train.lr_gamma, train.clip_grad_norm) == (0, "step", 1.0, None)
    for cell in cells:
        train = cell.profile.train
        assert train.lr == cell.lr and train.track_every == 10 and train.patience >= 150
        assert train.objective == {"A": "paper_code", "B": "fixed"}[cell.arm]
        # Only B stops on the yardstick: A's objective raises it by design.
        assert train.stop_yardstick_margin == {"A": None, "B": 1.0}[cell.arm]


def test_a_profile_without_a_regime_section_says_which_to_use():
    with pytest.raises(ProfileError, match="no regime: section.*--profile regime"):
        regime.regime_cells(load_profile("cpu"))
    broken = replace(load_profile("smoke"), regime={**load_profile("smoke").regime, "rate": [1e-4]})
    with pytest.raises(ProfileError, match="unknown key.*'rate'"):
        regime.regime_cells(broken)


def cells(flags: dict[str, str], **columns) -> pd.DataFrame:
    rows = {name: {"arm": name[0], "lr": float(name.split()[1]), "schedule": name.split()[2], "flag": flag, "unstable": "unstable" in flag,
                   "index_share": 0.4,
                   "layer_share": 0.05, "dominant_index": 7, "yardstick_host": 3.3, "yardstick_end": 3.5 if flag == "ok" else 9.0}
            for name, flag in flags.items()}
    return pd.DataFrame(rows).T.assign(**columns)


def test_the_long_cell_takes_the_highest_rate_that_stayed_stable():
    profile = load_profile("regime")
    # A host-damaged cell of A is still stable; an unstable one is not; other arms and plain cells do not count.
    table = cells({"A 1e-04 stable": "ok", "A 3e-04 stable": "host damaged", "A 1e-03 stable": "unstable, host damaged",
                   "B 3e-03 stable": "ok", "A 3e-03 plain": "ok"})
    long, why = regime.long_cell(profile, table)
    assert long.lr == 3e-4 and long.steps == 1000 and long.profile.train.track_every == 25 and "highest rate" in why
    none_stable = cells({"A 1e-04 stable": "unstable", "A 3e-04 stable": "unstable, host damaged"})
    long, why = regime.long_cell(profile, none_stable)
    assert long.lr == 1e-4 and "was unstable: the lowest rate" in why


def test_the_recommendation_needs_fluent_raised_tone_in_an_unflagged_cell():
    tone = {"verdict": ["raised", "raised", "did not clearly change"], "text": ["fluent", "fluent", "fluent"],
            "p_target_change": [0.05, 0.10, 0.0]}
    table = cells({"A 1e-04 stable": "ok", "A 3e-03 plain": "unstable", "B 3e-04 stable": "ok"}, **tone)
    assert regime.recommendation(table)["cell"] == "A 1e-04 stable"  # the unstable cell's larger change does not count
    flat = table.assign(verdict="did not clearly change")
    assert regime.recommendation(flat) | {"why": ""} == {"cell": None, "highest_unflagged": "B 3e-04 stable", "why": ""}
    assert regime.recommendation(flat.assign(flag="host damaged"))["highest_unflagged"] is None


def test_the_claims_read_only_unflagged_cells():
    tone = {"verdict": ["raised", "raised"], "text": ["fluent", "fluent"], "p_target_change": [0.05, 0.2],
            "p_target_change_low": [0.01, 0.1], "p_target_change_high": [0.09, 0.3], "scored": [12, 12]}
    table = cells({"A 1e-04 stable": "ok", "A 3e-03 plain": "host damaged"}, **tone)
    long = {"cell": "A 1e-04 stable 1000 steps", "arm": "A", "lr": 1e-4, "schedule": "stable", "flag": "ok", "unstable": False,
            "index_share": 0.1,
            "layer_share": 0.1, "dominant_index": 3, "final_index": 3, "settled": True, "held_since": 500, "steps": 1000,
            "yardstick_host": 3.3, "yardstick_end": 3.4}
    verdicts = by_number(regime.claims(table, long, ratio=2.0))
    assert verdicts == {"1": HELD, "2": HELD, "3": HELD, "4": HELD, "5": NOT_TESTED}
    # A host-damaged cell is stable: its striation counts for claim 2 and is listed with its flag; an unstable one's does not.
    damaged_striated = table.assign(index_share=[0.06, 0.4])
    claim = regime.claims(damaged_striated, long, ratio=2.0)[1]
    assert claim.verdict == HELD and "A 3e-03 plain (host damaged;" in claim.evidence
    only_unstable_striated = damaged_striated.assign(flag=["ok", "unstable"], unstable=[False, True])
    assert by_number(regime.claims(only_unstable_striated, long, ratio=2.0))["2"] == NOT_HELD
    all_unstable = table.assign(flag="unstable", unstable=True)
    assert by_number(regime.claims(all_unstable, None, ratio=2.0)) == {"1": NOT_HELD, "2": NOT_TESTED, "3": NOT_TESTED, "4": NOT_TESTED,
                                                                     "5": NOT_TESTED}
    damaged_long = by_number(regime.claims(table, long | {"flag": "host damaged"}, ratio=2.0))
    assert damaged_long["3"] == HELD  # stable though damaged: its index is read
    assert by_number(regime.claims(table, long | {"flag": "unstable", "unstable": True}, ratio=2.0))["3"] == NOT_TESTED
    unsettled = by_number(regime.claims(table, long | {"settled": None}, ratio=2.0))
    assert unsettled["3"] == NOT_TESTED
    assert by_number(regime.claims(table.assign(text="degenerate"), long, ratio=2.0))["4"] == NOT_HELD


def effect(index: int, only: float, masked: float, verdict: str) -> dict:
    """An irmlib.index_effect record with what effect_table reads."""
    conditions = {c: {"entropy": 2.0, "index_share": 0.01} for c in ("host", "irm", "only", "masked", "moved")}
    return {"index": index, "moved_to": index + 1, "conditions": conditions, "temperature": {"share": 0.5}, "verdict": verdict,
            "shares": {"distribution": {"irm_change": 4.0, "only": only, "masked": masked, "moved": masked}}}


def test_claim_5_holds_only_where_masking_the_index_removes_the_effect_in_every_stable_cell():
    table = cells({"A 1e-04 stable": "ok", "A 3e-03 plain": "host damaged"})
    knob = regime.effect_table({"A 1e-04 stable": effect(507, 0.8, 0.2, "norm knob (b)"), "A 3e-03 plain": effect(412, 0.7, 0.4, "neither")})
    assert list(knob["index"]) == [507, 412] and list(knob.masked_keeps) == [0.2, 0.4]
    assert by_number(regime.claims(table, None, ratio=2.0, effects=knob, much=0.5))["5"] == HELD
    inert = regime.effect_table({"A 1e-04 stable": effect(507, 0.8, 0.2, "norm knob (b)"), "A 3e-03 plain": effect(412, -0.1, 0.98, "inert (d)")})
    claim = regime.claims(table, None, ratio=2.0, effects=inert, much=0.5)[4]
    assert claim.verdict == NOT_HELD and "A 3e-03 plain (index 412): masked keeps 0.980" in claim.evidence and "inert (d)" in claim.evidence
    # A cell with no effect to explain is listed but not counted.
    idle = regime.effect_table({"A 1e-04 stable": effect(507, 0.8, 0.2, "norm knob (b)"), "A 3e-03 plain": effect(412, 0.0, 1.0, "no effect to explain")})
    claim = regime.claims(table, None, ratio=2.0, effects=idle, much=0.5)[4]
    assert claim.verdict == HELD and "No effect to explain (KL(irm || host) under the threshold): A 3e-03 plain." in claim.evidence
    nothing = regime.effect_table({"A 1e-04 stable": effect(507, 0.0, 1.0, "no effect to explain")})
    assert regime.claims(table, None, ratio=2.0, effects=nothing, much=0.5)[4].verdict == NOT_TESTED


def test_table_values_go_to_metrics_as_plain_numbers():
    from irmlib.metrics import json_value

    assert json_value(np.float64(1.5)) == 1.5 and type(json_value(np.int64(3))) is int and type(json_value(np.bool_(True))) is bool
    assert json_value("ok") == "ok" and json_value(None) is None
