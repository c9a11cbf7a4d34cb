"""Each notebook's verdicts come from a tested rule: for every claim, one case where it holds and
one where it does not (and, where the data cannot tell, "not tested"). No model is loaded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import striated
from irmlib.claims import HELD, NOT_HELD, NOT_TESTED, Claim, claims_table, fmt, in_order, plural, verdict
from irmlib.profile import AnalysisConfig
from irmlib.residual import host_ranks
from irmlib.striation import is_striated, pooled_importance, shared_dominant_index, striation_metrics
from irmlib.studies import data_sheet, generations, lm_head, mechanism, training, vertical_continuity

ANALYSIS = AnalysisConfig()


def by_number(claims: list[Claim]) -> dict[str, str]:
    return {c.number: c.verdict for c in claims}


def layered(layers: int = 6, hidden: int = 20, seed: int = 0) -> np.ndarray:
    """A matrix whose rows differ (one layer large), no column standing out."""
    m = np.random.default_rng(seed).uniform(0.0, 1.0, (layers, hidden))
    m[2] += 5.0
    return m


# ----- the vocabulary -----

def test_verdict_words_and_claim_rendering():
    assert (verdict(True), verdict(False), verdict(None)) == (HELD, NOT_HELD, NOT_TESTED)
    claim = Claim("1", "Something", HELD, "Because 0.5.")
    assert str(claim) == "(1) Something: held. Because 0.5."
    with pytest.raises(ValueError):
        Claim("1", "x", "maybe", "")
    assert claims_table([claim]).loc["1", "verdict"] == HELD
    assert plural(1, "run") == "1 run" and plural(2, "run") == "2 runs" and plural(3, "index", "indices") == "3 indices"
    assert fmt(float("nan")) == "n/a" and fmt(0.1234) == "0.12"


# ----- striation rules behind 04-06 -----

def test_shared_index_needs_agreement_and_pooling_weighs_runs_alike():
    a, b, c = striated(index=3), striated(index=3, seed=1), striated(index=7, seed=2)
    assert shared_dominant_index({"a": a, "b": b, "c": c}) == 3
    assert shared_dominant_index({"a": a, "c": c}) is None, "two runs with different dominant indices share none"
    assert shared_dominant_index({"c": c}) == 7, "a single run's is its own"
    huge = striated(index=9, seed=3) * 1e6  # as striated as the others, a million times larger
    pooled = pooled_importance([a, b, huge])
    assert np.argmax(pooled) == 3, "one run's huge outputs do not outweigh two runs"
    assert np.argmax(sum(m.mean(0) for m in (a, b, huge))) == 9, "unnormalised summing would pick the huge run's index"


def test_is_striated_reads_index_share_against_layer_share():
    assert is_striated(striation_metrics(striated(index=4)), 2.0)
    assert not is_striated(striation_metrics(layered()), 2.0)
    assert not is_striated(striation_metrics(np.zeros((6, 20))), 2.0), "an output with no variance has no striation"


def test_host_ranks_name_their_direction():
    table = pd.DataFrame({"massive_ratio_max": [1.0, 50.0, 2.0], "layer_norm_gain": [0.5, 0.01, 1.0],
                          "final_norm_gain": [0.3, 0.02, 0.9], "lm_head_column_norm": [1.0, 2.0, 3.0]})
    ranks = host_ranks(table, 1)
    assert ranks == {"rank_largest_massive_ratio_max": 1, "rank_smallest_layer_norm_gain": 1,
                     "rank_smallest_final_norm_gain": 1, "rank_largest_lm_head_column_norm": 2}


# ----- 01 -----

def length_check(leans: bool) -> dict:
    return {"texts": 100, "matched_texts": 40, "accuracy": 0.6, "accuracy_low": 0.5, "accuracy_high": 0.7, "matched_accuracy": 0.55,
            "matched_accuracy_low": 0.4, "matched_accuracy_high": 0.7 if not leans else 0.45, "chance": 0.25,
            "length_only_accuracy": 0.4, "matched_length_only_accuracy": 0.25, "leans_on_length": leans}


def judge_measure(accuracy: float, sadness: float) -> dict:
    return {"texts": 144, "accuracy": accuracy, "accuracy_interval": [accuracy - 0.05, accuracy + 0.05],
            "recall": {"anger": 0.9, "sadness": sadness, "joy": 0.9, "neutral": 0.9}, "unscored": 0}


def gate_measure(precision: float, recall: float) -> dict:
    return {"texts": 103, "precision": precision, "precision_interval": [0.9, 1.0], "recall": recall,
            "recall_interval": [0.85, 0.99], "tone_false_degenerate": 0.0, "tone_texts": 144}


def test_data_sheet_claims_hold_and_fail():
    held = data_sheet.claims(0.7, 0.25, {"anger": 20.0, "neutral": 18.0}, length_check(False), ANALYSIS)
    assert by_number(held) == {"1": HELD, "2": HELD, "3": HELD}
    failed = data_sheet.claims(0.4, 0.25, {"anger": 30.0, "neutral": 12.0}, length_check(True), ANALYSIS)
    assert by_number(failed) == {"1": NOT_HELD, "2": NOT_HELD, "3": NOT_HELD}
    assert "2.50x" in str(failed[1])


def test_instrument_claims_need_every_threshold():
    assert by_number(data_sheet.instrument_claims(judge_measure(0.9, 0.8), gate_measure(1.0, 0.96), ANALYSIS)) == {"4": HELD, "5": HELD}
    failed = data_sheet.instrument_claims(judge_measure(0.9, 0.7), gate_measure(1.0, 0.94), ANALYSIS)
    assert by_number(failed) == {"4": NOT_HELD, "5": NOT_HELD} and "sadness 0.700" in str(failed[0])
    assert "perplexity is not part of the gate" in str(failed[1])
    with_host = data_sheet.instrument_claims(judge_measure(0.9, 0.8), {**gate_measure(1.0, 0.96), "perplexity_host": "SmolLM2-135M-Instruct"},
                                             ANALYSIS)
    assert "perplexity under SmolLM2-135M-Instruct is part of the gate" in str(with_host[1])
    assert by_number(data_sheet.instrument_claims(judge_measure(0.84, 0.8), gate_measure(0.94, 1.0), ANALYSIS)) == {"4": NOT_HELD, "5": NOT_HELD}


# ----- 02 -----

def test_training_claims_hold_fail_and_say_not_tested_without_a_second_precision():
    summaries = {"anger-seed0": {"initial_val_loss": 10.0, "best_val_loss": 4.0}, "sadness-seed0": {"initial_val_loss": 9.0, "best_val_loss": 9.5}}
    assert by_number(training.claims(summaries, ANALYSIS)) == {"1": NOT_HELD}
    assert by_number(training.claims({"anger-seed0": summaries["anger-seed0"]}, ANALYSIS)) == {"1": HELD}
    table = pd.DataFrame({"anger-seed0": {"precision": "cpu-bf16-autocast", "best_val_loss": 4.0, "best_val_loss float32": 4.02,
                                          "relative_difference": 0.005, "dominant_index": 7, "dominant_index float32": 7},
                          "sadness-seed0": {"precision": "cpu-bf16-autocast", "best_val_loss": 4.0, "best_val_loss float32": 4.2,
                                            "relative_difference": 0.048, "dominant_index": 7, "dominant_index float32": 7}}).T
    verdicts = by_number(training.precision_claims(table, ANALYSIS))
    assert verdicts == {"dtype, anger-seed0": HELD, "dtype, sadness-seed0": NOT_HELD}
    assert by_number(training.precision_claims(pd.DataFrame(), ANALYSIS)) == {"dtype": NOT_TESTED}
    # Without tracking there is no dominant index to compare: close losses cannot tell, far ones fail on their own.
    untracked = table.assign(**{"dominant_index": None, "dominant_index float32": None})
    verdicts = by_number(training.precision_claims(untracked, ANALYSIS))
    assert verdicts["dtype, anger-seed0"] == NOT_TESTED and verdicts["dtype, sadness-seed0"] == NOT_HELD
    assert "not tracked" in training.precision_claims(untracked, ANALYSIS)[0].evidence


def test_the_health_claim_fails_on_any_flagged_run():
    row = {"yardstick_host": 3.0, "yardstick_end": 3.2, "initial_val_loss": 10.0, "last_val_loss": 4.0, "flag": "ok"}
    healthy = pd.DataFrame({"anger-seed0": row, "sadness-seed0": row}).T
    assert by_number([training.health_claim(healthy, ANALYSIS)]) == {"2": HELD}
    damaged = healthy.copy()
    damaged.loc["sadness-seed0", ["yardstick_end", "flag"]] = [9.0, "host damaged"]
    claim = training.health_claim(damaged, ANALYSIS)
    assert by_number([claim]) == {"2": NOT_HELD} and "1 of 2 runs flagged" in claim.evidence and "3.000 (host) -> 9.000" in claim.evidence
    unmeasured = healthy.assign(flag="not measured")
    assert by_number([training.health_claim(unmeasured, ANALYSIS)]) == {"2": NOT_TESTED}


# ----- 03 -----

def scored_generations(irm_p: list[float | None], base_p: float = 0.2, seeds: tuple[int, ...] = (0,), degenerate: int = 0) -> pd.DataFrame:
    """Greedy generations of the base host and anger IRMs on len(irm_p) questions; None: too short,
    and the first `degenerate` IRM texts degenerate (unscored, as the gate leaves them)."""
    rows = []
    for q, p in enumerate(irm_p):
        rows.append({"model": "base", "mode": "greedy", "question": f"q{q}", "p_anger": base_p + 0.01 * (q % 3), "perplexity": 5.0,
                     "distinct_2": 0.8, "gate": "fluent", "too_short": False})
        for seed in seeds:
            shift = 0.0 if seed == seeds[0] else -0.5
            gate = "too_short" if p is None else "degenerate" if q < degenerate else "fluent"
            value = p + shift + 0.01 * (q % 2) if gate == "fluent" else np.nan
            rows.append({"model": f"anger-seed{seed}", "mode": "greedy", "question": f"q{q}", "p_anger": value,
                         "perplexity": 6.0, "distinct_2": 0.8, "gate": gate, "too_short": gate == "too_short"})
    return pd.DataFrame(rows)


def test_generation_claims_raise_in_fluent_text_or_not():
    raised = generations.alignment_summary(scored_generations([0.6] * 12), ("anger",), min_scored=10)
    assert raised.loc[0, "verdict"] == "raised" and raised.loc[0, "text"] == "fluent"
    assert by_number(generations.claims(raised)) == {"1, anger": HELD, "2": HELD}
    # Raised on its 11 fluent texts, but 5 of 16 (31%, over the 25% a profile allows) are degenerate.
    degenerate = generations.alignment_summary(scored_generations([0.6] * 16, degenerate=5), ("anger",), min_scored=10)
    assert degenerate.loc[0, "verdict"] == "raised" and degenerate.loc[0, "scored"] == 11
    assert degenerate.loc[0, "text"] == "degenerate: 31% degenerate texts"
    assert by_number(generations.claims(degenerate))["1, anger"] == NOT_HELD
    empty = generations.alignment_summary(scored_generations([None] * 10 + [0.6] * 2), ("anger",), min_scored=10)
    assert empty.loc[0, "scored"] == 2 and empty.loc[0, "too_short_irm"] == pytest.approx(10 / 12)
    assert by_number(generations.claims(empty)) == {"1, anger": NOT_TESTED, "2": NOT_TESTED}


def test_alignment_summary_names_seeds_that_disagree_and_one_perplexity_statistic():
    summary = generations.alignment_summary(scored_generations([0.6] * 12, seeds=(0, 1)), ("anger",), min_scored=10)
    row = summary.iloc[0]
    assert not row.seeds_agree and row.verdict_per_seed == "seed 0: raised; seed 1: lowered"
    assert row.perplexity_ratio == pytest.approx(row.median_perplexity_irm / row.median_perplexity_base)
    claim = generations.claims(summary)[0]
    assert "The seeds differ: seed 0: raised; seed 1: lowered" in claim.evidence


def test_alpha_table_and_ends_keep_an_alpha_whose_generations_are_all_empty():
    rows = []
    for alpha, p in ((0.0, 0.2), (1.0, 0.5), (2.0, None)):
        for q in range(4):
            rows.append({"emotion": "anger", "alpha": alpha, "question": f"q{q}", "p_target": np.nan if p is None else p,
                         "perplexity": np.nan if p is None else 5.0 + alpha, "distinct_2": np.nan if p is None else 0.8,
                         "too_short": p is None})
    table = generations.alpha_table(pd.DataFrame(rows), min_scored=3)
    assert list(table.index.get_level_values("alpha")) == [0.0, 1.0, 2.0]
    assert table.loc[("anger", 2.0), "scored"] == 0 and table.loc[("anger", 2.0), "too_short"] == 1.0
    assert np.isnan(table.loc[("anger", 2.0), "p_target"])
    ends = generations.alpha_ends(table).loc["anger"]
    assert ends.alpha_last == 2.0 and np.isnan(ends.p_target_last) and ends.scored_last == 0, "not alpha 1's value"
    assert ends.largest_scored_alpha == 1.0 and ends.flag == "ok"
    assert generations.alpha_ends(table, {"anger": "host damaged"}).loc["anger", "flag"] == "host damaged"


# ----- 04 -----

def test_vertical_continuity_claims():
    runs = {"anger-seed0": striated(index=3), "sadness-seed0": striated(index=3, seed=1),
            "untrained": np.random.default_rng(5).uniform(0, 1, (6, 20))}
    table = vertical_continuity.striation_table(runs, ["anger-seed0"], 5)
    trained = ["anger-seed0", "sadness-seed0"]
    agreement = vertical_continuity.consistency({n: runs[n] for n in trained}, 5)
    host = pd.DataFrame({"massive_ratio_max": np.arange(20.0), "layer_norm_gain": np.ones(20), "final_norm_gain": np.ones(20),
                         "lm_head_column_norm": np.ones(20)})
    ranks = vertical_continuity.dominant_ranks_on_host(host, {n: 3 for n in trained})
    steering = pd.DataFrame({"dominant_index": [3], "index_share": [0.5], "spearman_with_irm": [0.1]}, index=["anger, all tokens"])
    held = by_number(vertical_continuity.claims(table, trained, ["anger-seed0 (shuffled)"], agreement, 3, 100.0, ranks, steering, ANALYSIS))
    assert held == {"1": HELD, "2": HELD, "3": HELD, "4": HELD, "5": HELD}
    elsewhere = by_number(vertical_continuity.claims(table, trained, ["anger-seed0 (shuffled)"], agreement, 19, 100.0, ranks, steering,
                                                     ANALYSIS))
    assert elsewhere["4"] == NOT_HELD, "the host's massive-activation index is 19, the shared one 3"
    apart = {"anger-seed0": layered(), "sadness-seed0": striated(index=8, seed=1), "untrained": runs["untrained"]}
    table = vertical_continuity.striation_table(apart, ["anger-seed0"], 5)
    agreement = vertical_continuity.consistency({n: apart[n] for n in trained}, 5)
    assert agreement["shared_dominant_index"] is None
    failed = vertical_continuity.claims(table, trained, ["anger-seed0 (shuffled)"], agreement, 19, 100.0, ranks, steering, ANALYSIS)
    verdicts = by_number(failed)
    assert verdicts["3"] == NOT_HELD and verdicts["4"] == NOT_TESTED and verdicts["5"] == NOT_TESTED, "no shared index to compare"
    assert "No shared index" in failed[2].evidence and "no shared index" in failed[3].evidence
    # Two indices dominating two runs each: the shared one is chosen by pooled importance, and the tie is said.
    tied_runs = {"a": striated(index=3, height=20.0), "b": striated(index=3, height=20.0, seed=1),
                 "c": striated(index=8, seed=2), "d": striated(index=8, seed=3)}
    tie = vertical_continuity.consistency(tied_runs, 5)
    assert tie["shared_dominant_index"] == 3 and tie["tied_with"] == [8]
    tie_table = vertical_continuity.striation_table({**tied_runs, "untrained": runs["untrained"]}, ["a"], 5)
    tie_claims = {c.number: c for c in vertical_continuity.claims(tie_table, list(tied_runs), ["a (shuffled)"], tie, 3, 100.0,
                                                                 vertical_continuity.dominant_ranks_on_host(host, {n: 3 for n in tied_runs}),
                                                                 steering, ANALYSIS)}
    assert tie_claims["3"].verdict == NOT_HELD and "tied with [8]" in tie_claims["3"].evidence
    assert agreement["tied_with"] == [] and vertical_continuity.consistency({n: runs[n] for n in trained}, 5)["tied_with"] == []


def test_vertical_continuity_reads_unflagged_runs_and_names_the_others():
    names = ["anger-seed0", "neutral-seed0", "sadness-seed0"]
    kept, flagged = vertical_continuity.evidence_runs(names, {"anger-seed0": "ok", "neutral-seed0": "host damaged", "sadness-seed0": "ok"})
    assert kept == ["anger-seed0", "sadness-seed0"] and flagged == {"neutral-seed0": "host damaged"}
    every, all_flagged = vertical_continuity.evidence_runs(names[:2], {"anger-seed0": "unstable", "neutral-seed0": "host damaged"})
    assert every == names[:2] and len(all_flagged) == 2  # still shown, but no claim rests on them
    runs = {"anger-seed0": striated(index=3), "neutral-seed0": striated(index=3, seed=1),
            "untrained": np.random.default_rng(5).uniform(0, 1, (6, 20))}
    table = vertical_continuity.striation_table(runs, ["anger-seed0"], 5)
    agreement = vertical_continuity.consistency({n: runs[n] for n in every}, 5)
    host = pd.DataFrame({"massive_ratio_max": np.arange(20.0), "layer_norm_gain": np.ones(20), "final_norm_gain": np.ones(20),
                         "lm_head_column_norm": np.ones(20)})
    ranks = vertical_continuity.dominant_ranks_on_host(host, {n: 3 for n in every})
    steering = pd.DataFrame({"dominant_index": [3], "index_share": [0.5], "spearman_with_irm": [0.1]}, index=["anger, all tokens"])
    found = vertical_continuity.claims(table, every, ["anger-seed0 (shuffled)"], agreement, 3, 100.0, ranks, steering, ANALYSIS, all_flagged)
    assert {c.verdict for c in found} == {NOT_TESTED} and "Every run is flagged" in found[0].evidence
    some = vertical_continuity.claims(table, every[:1], ["anger-seed0 (shuffled)"], vertical_continuity.consistency({"anger-seed0": runs["anger-seed0"]}, 5),
                                      3, 100.0, ranks.iloc[:1], steering, ANALYSIS, {"neutral-seed0": "host damaged"})
    assert some[0].verdict == HELD and "Left out as flagged: {'neutral-seed0': 'host damaged'}" in some[0].evidence


def test_clearest_first_orders_panels_by_striation():
    table = vertical_continuity.striation_table({"flat": layered(), "sharp": striated(index=2, height=20.0),
                                                 "mild": striated(index=5, height=1.0)}, [], 5)
    assert vertical_continuity.clearest_first(table, ["flat", "mild", "sharp"]) == ["sharp", "mild", "flat"]


# ----- 05 -----

def test_probed_index_comes_from_striated_runs_only():
    assert lm_head.probed_index({"a": layered(), "b": layered(seed=1)}, 2.0)["index"] is None
    probed = lm_head.probed_index({"a": striated(index=4), "b": layered(), "c": striated(index=4, seed=2)}, 2.0)
    assert probed["index"] == 4 and probed["striated"] == ["a", "c"]
    apart = lm_head.probed_index({"a": striated(index=4, height=2.0), "b": striated(index=9, height=20.0, seed=1)}, 2.0)
    assert apart["index"] == 9 and "most clearly striated" in apart["source"]


def ablation_rows(dominant_shift: float) -> pd.DataFrame:
    rows = []
    for condition, shift in (("unmasked", 0.0), ("dominant masked", dominant_shift), ("random masked", 0.0)):
        for q in range(12):
            rows.append({"emotion": "anger", "condition": condition, "question": f"q{q}", "p_target": 0.5 + shift + 0.01 * (q % 3)})
    return pd.DataFrame(rows)


def test_lm_head_claims():
    kl = pd.DataFrame({1.0: [0.1, 0.01, 0.02], 16.0: [3.0, 1.0, 1.5]}, index=["IRM dominant", "random 1", "random 2"])
    masked = pd.DataFrame({"anger": {"masked_index": 4, "new_dominant_index": 9, "index_share": 0.6, "layer_share": 0.05, "striated": True,
                                     "masked_index_output": 0.0, "best_val_loss_masked": 4.0, "best_val_loss_unmasked": 4.0,
                                     "p_target_masked_training": 0.3, "scored_masked_training": 12}}).T
    probed = {"index": 4, "striated": ["a"], "source": "shared by the striated runs (a)"}
    held = by_number(lm_head.claims(probed, kl, ablation_rows(-0.3), masked, 3, 20, 10))
    assert held == {"1": HELD, "2, anger": HELD, "3, anger": HELD}
    # Its output spread over layers, not one index: the retrained IRM has a dominant index, but no striation.
    diffuse = masked.assign(index_share=0.1, layer_share=0.3, striated=False)
    weak = pd.DataFrame({1.0: [0.1, 0.01, 0.02], 16.0: [0.5, 1.0, 1.5]}, index=kl.index)
    failed = lm_head.claims(probed, weak, ablation_rows(0.0), diffuse, 3, 20, 10)
    assert by_number(failed) == {"1": NOT_HELD, "2, anger": NOT_HELD, "3, anger": NOT_HELD}
    assert "index share 0.10 vs layer share 0.30 (not striated)" in failed[2].evidence
    nothing = by_number(lm_head.claims({"index": None, "striated": [], "source": "no run is striated"}, kl, ablation_rows(-0.3), masked, None,
                                       20, 20))
    assert nothing["1"] == NOT_TESTED and nothing["2, anger"] == NOT_TESTED
    flagged = lm_head.claims(probed, kl, ablation_rows(-0.3), masked, 3, 20, 10, {"anger": "host damaged"})
    assert by_number(flagged)["2, anger"] == NOT_TESTED and "flagged host damaged: not evidence" in flagged[1].evidence
    assert by_number(lm_head.claims(probed, kl, ablation_rows(-0.3), masked, 3, 20, 10, {"anger": "ok"}))["2, anger"] == HELD


# ----- 06 -----

def arm(index_share: float, layer_share: float, shared: int | None, agreement: float, runs: int = 4) -> dict:
    return {"runs": runs, "index_share": index_share, "layer_share": layer_share, "shared_dominant_index": shared,
            "dominant_indices": [shared or 1] * runs, "top1_agreement": agreement, "pairs": runs * (runs - 1) // 2, "top1_chance": 1 / 576}


def test_prediction_verdict_reads_ranks_against_chance():
    high = mechanism.prediction_verdict([18, 3, 1, 1, 2, 40, 7, 1], 576, 5)
    assert high["verdict"] == HELD and high["dominant_in"] == 3 and high["top5_in"] == 5, "ranks near the top are far above chance"
    assert high["chance_median_rank"] == 288.5
    assert mechanism.prediction_verdict([300, 120, 500, 40], 576, 5)["verdict"] == NOT_HELD
    assert mechanism.prediction_verdict([], 576, 5)["verdict"] == NOT_TESTED


def test_mechanism_claims():
    tone = pd.DataFrame({"base (plain)": {"verdict": "base"},
                         "arm A": {"p_target": 0.4, "p_target_change": 0.2, "p_target_change_low": 0.1, "p_target_change_high": 0.3,
                                   "scored": 20, "verdict": "raised", "median_perplexity": 6.0, "distinct_2": 0.8, "text": "fluent"},
                         "arm B": {"p_target": 0.4, "p_target_change": 0.2, "p_target_change_low": 0.1, "p_target_change_high": 0.3,
                                   "scored": 20, "verdict": "raised", "median_perplexity": 600.0, "distinct_2": 0.8,
                                   "text": "degenerate: perplexity x100 the base's"},
                         "arm E": {"p_target": np.nan, "p_target_change": np.nan, "p_target_change_low": np.nan, "p_target_change_high": np.nan,
                                   "scored": 0, "verdict": "not tested (0 scored texts, 10 needed)", "median_perplexity": np.nan,
                                   "distinct_2": np.nan, "text": "degenerate: 100% under two words"}}).T
    ranks = pd.DataFrame({"r1": [1, 300], "r2": [1, 200], "r3": [2, 400]}, index=["b_final_norm_gain", "c_frequency"])
    per_arm = {"A": arm(0.4, 0.05, 7, 0.8), "B": arm(0.1, 0.1, None, 0.0), "E": arm(0.1, 0.05, 9, 1.0, runs=1)}
    verdicts = by_number(mechanism.claims(per_arm, {"b_final_norm_gain": 7, "c_frequency": 3}, ranks, tone, 576, ANALYSIS))
    assert verdicts == {"1": HELD, "2": HELD, "3, b_final_norm_gain": HELD, "3, c_frequency": NOT_HELD,
                        "4, arm A": HELD, "4, arm B": NOT_HELD, "4, arm E": NOT_TESTED}
    per_arm = {"A": arm(0.36, 0.07, None, 0.0), "B": arm(0.31, 0.07, None, 0.0), "E": arm(0.35, 0.05, 507, 1.0, runs=1)}
    failed = mechanism.claims(per_arm, {}, ranks.iloc[:0], tone.iloc[:1], 576, ANALYSIS)
    assert by_number(failed) == {"1": NOT_HELD, "2": NOT_HELD}
    assert "no shared index" in failed[0].evidence
    one_run_each = {"A": arm(0.4, 0.05, 7, float("nan"), runs=1), "B": arm(0.1, 0.1, 3, float("nan"), runs=1)}
    assert by_number(mechanism.claims(one_run_each, {}, ranks.iloc[:0], tone.iloc[:1], 576, ANALYSIS))["1"] == NOT_TESTED
    # Every run of E flagged: no evidence, so nothing to say about whether its striation fades.
    e_flagged = per_arm | {"E": arm(float("nan"), float("nan"), None, float("nan"), runs=0)}
    assert by_number(mechanism.claims(e_flagged, {}, ranks.iloc[:0], tone.iloc[:1], 576, ANALYSIS))["2"] == NOT_TESTED
    # Arm A without a striation (index share under the ratio x its layer share): nothing to fade.
    a_flat = per_arm | {"A": arm(0.13, 0.20, None, 0.0)}
    flat = {c.number: c for c in mechanism.claims(a_flat, {}, ranks.iloc[:0], tone.iloc[:1], 576, ANALYSIS)}
    assert flat["2"].verdict == NOT_TESTED and "no striation to fade" in flat["2"].evidence


def test_mechanism_tone_claim_of_a_flagged_run_is_not_tested():
    raised = {"p_target": 0.9, "p_target_change": 0.5, "p_target_change_low": 0.3, "p_target_change_high": 0.7, "scored": 20,
              "verdict": "raised", "median_perplexity": 6.0, "distinct_2": 0.8, "text": "fluent"}
    tone = pd.DataFrame({"base (plain)": {"verdict": "base", "run": "", "flag": ""},
                         "arm B": raised | {"run": "B:anger-seed0-armB", "flag": "unstable"},
                         "arm C": raised | {"run": "C:anger-seed0-armC", "flag": "ok"}}).T
    per_arm = {"A": arm(0.4, 0.05, 7, 0.8), "B": arm(0.1, 0.1, None, 0.0)}
    found = {c.number: c for c in mechanism.claims(per_arm, {}, pd.DataFrame(), tone, 576, ANALYSIS)}
    assert found["4, arm B"].verdict == NOT_TESTED and "flagged unstable" in found["4, arm B"].evidence
    assert found["4, arm C"].verdict == HELD


def test_representative_run_is_the_first_unflagged_run_of_the_emotion():
    results = [{"arm": "B", "run": "B:a0", "emotion": "anger", "flag": "unstable"},
               {"arm": "B", "run": "B:s0", "emotion": "sadness", "flag": "ok"},
               {"arm": "B", "run": "B:a1", "emotion": "anger", "flag": "ok"},
               {"arm": "L", "run": "L:a0", "emotion": "anger", "flag": "host damaged"},
               {"arm": "L", "run": "L:a1", "emotion": "anger", "flag": "host damaged"}]
    chosen = mechanism.representative_runs(results, "anger")
    assert list(chosen) == ["B", "L"]
    assert chosen["B"]["run"] == "B:a1" and chosen["L"]["run"] == "L:a0"  # every run flagged: the first, with its flag


def test_claims_in_order_of_their_number():
    numbered = [Claim(n, "s", HELD, "e") for n in ("1", "4, arm A", "3, set b", "3, a", "5", "2")]
    assert [c.number for c in in_order(numbered)] == ["1", "2", "3, set b", "3, a", "4, arm A", "5"]
