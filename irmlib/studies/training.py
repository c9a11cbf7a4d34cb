"""Notebook 02's study: its runs on one yardstick, whether each run's dominant index does anything
(irmlib.index_effect), the notebook's claims about its training runs, and the float32 check that
`./reproduce.sh bench --precision-check` runs (each named run trained again in float32)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import runs
from ..claims import Claim, verdict
from ..health import is_evidence
from ..host import Host
from ..index_effect import EffectRules, carries_effect, dominant_index_effect
from ..irm import load_irm
from ..precision import choose_precision
from ..profile import with_overrides
from ..profile_runs import HEALTH_COLUMNS, run_health, run_probe, train_for_profile
from ..train import read_tracking


def _nothing_compared(why: str) -> pd.DataFrame:
    """An empty precision table that says why nothing was compared: claim 2 states it."""
    table = pd.DataFrame()
    table.attrs["not_tested"] = why
    return table


def precision_check(host: Host, profile, rows: list[dict], run_names: tuple[str, ...]):
    """Notebook 02's check that the dtype does not change the findings: each named run of the
    profile ("<emotion>-seed<seed>") trained again in float32 (run variant "float32"), beside the
    profile's own run, which is trained first if missing. Returns a DataFrame, one row per run:
    both precisions, both best validation losses and their relative difference, and the dominant
    index on the tracker's probe texts at the last tracked step (None without tracking). Empty,
    with the reason in `attrs["not_tested"]`, where the profile's own runs already train in
    float32 or `run_names` names none."""
    device = host.device
    other = with_overrides(profile, {"precision": "float32"})
    if choose_precision(device, profile.train.precision).name == choose_precision(device, "float32").name:
        return _nothing_compared("This machine trains in float32 already, so there is no second precision to compare.")
    if not run_names:
        return _nothing_compared("No runs named in precision_check: name some in the profile to compare them in float32.")
    def last_dominant(directory: Path) -> int | None:
        tracking = read_tracking(directory)
        return int(tracking.dominant_index.iloc[-1]) if len(tracking) else None

    table = {}
    for name in run_names:
        emotion, seed, _ = runs.parse_run_name(name)
        probe = run_probe(host, profile, emotion, rows)
        own = train_for_profile(host, profile, emotion, seed, rows, progress=False, probe=probe)
        twin = train_for_profile(host, other, emotion, seed, rows, progress=False, variant="float32", probe=probe)
        table[name] = {"precision": own["precision"], "float32 precision": twin["precision"],
                       "best_val_loss": own["best_val_loss"], "best_val_loss float32": twin["best_val_loss"],
                       "relative_difference": abs(own["best_val_loss"] - twin["best_val_loss"]) / twin["best_val_loss"],
                       "dominant_index": last_dominant(runs.run_dir(profile, emotion, seed)),
                       "dominant_index float32": last_dominant(runs.run_dir(profile, emotion, seed, "float32"))}
    return pd.DataFrame(table).T


def health_table(profile, run_names) -> pd.DataFrame:
    """Notebook 02's runs on one yardstick (irmlib.health): one row per run name with the host's
    next-token loss on the emotion's probe texts, the same with the IRM at the start and at the end
    (the IRM every notebook reads), the objective's own validation loss at the start and at the
    end, both flags, the peak output RMS ratio, the final dominant index and whether it settled."""
    rows = {}
    for name in run_names:
        emotion, seed, variant = runs.parse_run_name(name)
        health = run_health(runs.run_dir(profile, emotion, seed, variant), profile.analysis)
        rows[name] = {key: health[key] for key in HEALTH_COLUMNS}
    return pd.DataFrame(rows).T


def run_effects(host: Host, profile, rows: list[dict], gains: pd.Series, rules: EffectRules = EffectRules()) -> dict[str, dict]:
    """Whether each run's dominant index does anything (irmlib.index_effect): the IRM every
    notebook reads, on its emotion's probe texts (the ones its tracker read), with its dominant
    index there kept alone, masked and moved to the next index by `gains` (the host's mean
    layer-norm gain per index, irmlib.residual.norm_gains), at the objective's label shift.
    Returns {run name: `effect_record`}."""
    records = {}
    for emotion in profile.emotions:
        probe = run_probe(host, profile, emotion, rows)
        for seed in profile.seeds:
            irm = load_irm(runs.read_checkpoint(profile, emotion, seed), host, device=host.device).eval()
            index = int(read_tracking(runs.run_dir(profile, emotion, seed)).dominant_index.iloc[-1])
            records[runs.run_name(emotion, seed)] = dominant_index_effect(host, irm, probe.batch, index, gains,
                                                                          profile.train.objective_spec.label_shift, rules)
    return records


def effect_claim(effects: pd.DataFrame, health: pd.DataFrame, much: float) -> Claim:
    """Notebook 02's claim 3: in every unflagged run the dominant index carries the IRM's effect
    (masking it keeps at most 1 - `much` of the IRM's next-token distribution). effects:
    irmlib.index_effect.effect_table of `run_effects`; health: `health_table` (its flags)."""
    kept = effects[health.loc[effects.index, "flag"].map(is_evidence)] if len(effects) else effects
    held, evidence = carries_effect(kept, much, "unflagged run")
    flagged = effects.index.difference(kept.index)
    return Claim("3", f"In every unflagged run the dominant index carries the IRM's effect (masking it keeps at most {1 - much:g} "
                      f"of the IRM's next-token distribution)", verdict(held),
                 evidence + (f" Flagged, not counted: {', '.join(flagged)}." if len(flagged) else ""))


def claims(summaries: dict[str, dict], analysis) -> list[Claim]:
    """Notebook 02's claim 1: training lowered the objective's own validation loss in every run (a
    loss of its objective, not comparable across objectives). Claims 2 and 3 are `health_claim`
    and `effect_claim`."""
    lowered = {run: s["initial_val_loss"] - s["best_val_loss"] for run, s in summaries.items()}
    return [Claim("1", "Training lowered the objective's validation loss in every run", verdict(all(d > 0 for d in lowered.values())),
                  f"Lowered in {sum(d > 0 for d in lowered.values())} of {len(lowered)} runs: "
                  + "; ".join(f"{run} {summaries[run]['initial_val_loss']:.3f} -> {summaries[run]['best_val_loss']:.3f}" for run in lowered) + ".")]


def precision_claims(precision_table: pd.DataFrame, analysis) -> list[Claim]:
    """`./reproduce.sh bench --precision-check`'s verdicts: per run of the precision check, the
    float32 twin's best validation loss is within `analysis.precision_tolerance` (relative) and its
    dominant index on the probe texts is the same; not tested where nothing was compared (the
    reason in the table's attrs["not_tested"]), or, the losses being close, where the dominant
    index was not tracked."""
    if precision_table.empty:
        return [Claim("dtype", "The dtype does not change the findings", verdict(None),
                      precision_table.attrs.get("not_tested", "No run was compared."))]
    found = []
    for run, row in precision_table.iterrows():
        close = row["relative_difference"] <= analysis.precision_tolerance
        tracked = pd.notna(row["dominant_index"]) and pd.notna(row["dominant_index float32"])
        if not close:
            held = False  # whatever the index: the losses alone fail the claim
        else:
            held = bool(row["dominant_index"] == row["dominant_index float32"]) if tracked else None
        index = (f"dominant index on the probe texts {row['dominant_index']} vs {row['dominant_index float32']}" if tracked
                 else "dominant index not compared: not tracked (train.track_every is off)")
        found.append(Claim(f"dtype, {run}", f"The dtype does not change the findings (within {analysis.precision_tolerance:.0%} and the same index)",
                           verdict(held),
                           f"Best validation loss {row['best_val_loss']:.3f} ({row['precision']}) vs {row['best_val_loss float32']:.3f} "
                           f"(float32), {row['relative_difference']:.2%} apart; {index}."))
    return found


def health_claim(health: pd.DataFrame, analysis) -> Claim:
    """Notebook 02's claim 2: every run trained without a flag (irmlib.health): none unstable, none
    whose yardstick ended more than analysis.host_damaged_margin nats above the host's. Not tested
    where no run's health was measured. health: `health_table`."""
    measured = health[health.flag != "not measured"]
    flagged = measured[~measured.flag.map(is_evidence)]
    evidence = "; ".join(f"{run} {row.flag}: yardstick {row.yardstick_host:.3f} (host) -> {row.yardstick_end:.3f}, own validation "
                         f"loss {row.initial_val_loss:.3f} -> {row.last_val_loss:.3f}" for run, row in measured.iterrows())
    return Claim("2", f"Every run trained without a flag (stable, yardstick within {analysis.host_damaged_margin:g} nats of the host's)",
                 verdict(None if measured.empty else flagged.empty),
                 f"{len(flagged)} of {len(measured)} runs flagged. {evidence}." if len(measured) else "No run's health was measured.")
