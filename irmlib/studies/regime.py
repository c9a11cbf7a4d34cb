"""Notebook 07's study: the training regime map. Which learning rates and schedules train an IRM
stably (irmlib.health), whether a striation forms there and how fast, and which cell the default
recipe should take.

Two flags, two questions. A cell is *stable* when it is not `unstable`: the striation and the
long cell are read on stable cells. The paper code's objective scores the token after next and
EOS on padding, so it raises the host's next-token loss (the yardstick) by design: a stable cell
of arm A may also be `host_damaged`, and says so. Only cells with neither flag count for tone and
for the recommended recipe.

The profile's `regime:` section:

    regime:
      emotion: anger                 # one emotion and seed for every cell
      seed: 0
      arms:                          # overrides of the profile per arm; stop_yardstick_margin stops
        A: {objective: paper_code}   # a cell once its yardstick is that many nats above the host's at
        B: {objective: fixed, stop_yardstick_margin: 1.0}   # two tracked steps (A's rises by design)
      rates: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]                     # with the stable schedule
      stable: {warmup_steps: 15, decay: cosine, decay_floor: 0.1, clip_grad_norm: 1.0}
      plain_rates: [1.0e-3, 3.0e-3]  # without warmup, decay or clipping (constant rate)
      steps: 150                     # every cell's step budget
      track_every: 10
      long: {arm: A, steps: 1000, track_every: 25}   # at the highest rate whose stable cell of that arm stayed ok

Each unflagged cell's tone is measured on the profile's `n_eval_prompts` held-out questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import index_effect, runs
from ..claims import NOT_TESTED, Claim, fmt, verdict
from ..health import Probe, is_evidence
from ..host import Host
from ..index_effect import EffectRules, carries_effect, dominant_index_effect
from ..irm import load_irm
from ..judge import EmotionJudge
from ..profile import Profile, ProfileError, with_overrides
from ..profile_runs import run_health, train_for_profile
from ..scoring import tone_table
from ..striation import is_striated
from ..train import read_tracking

# Notebook 07 (published from run 20261203T195420) reads the cells' effect table as regime.effect_table.
effect_table = index_effect.effect_table

REGIME_KEYS = {"emotion", "seed", "arms", "rates", "stable", "plain_rates", "steps", "track_every", "long"}
PLAIN_SCHEDULE = {"warmup_steps": 0, "decay": "step", "lr_gamma": 1.0, "clip_grad_norm": None}


@dataclass(frozen=True)
class Cell:
    """One cell of the map: an arm at a rate, with the stable schedule or without it, for a step
    budget; `profile` is the profile it trains with and `variant` its run's name suffix."""

    name: str
    arm: str
    lr: float
    schedule: str  # "stable" or "plain"
    steps: int
    profile: Profile
    variant: str


def regime_spec(profile: Profile) -> dict:
    """The profile's `regime:` section, checked: a named error for a profile without one or with an unknown key."""
    spec = profile.regime
    if not spec:
        raise ProfileError(f"Profile '{profile.name}' has no regime: section; notebook 07 runs with the regime profile "
                           "(./reproduce.sh --profile regime) or the smoke profile.")
    unknown = sorted(set(spec) - REGIME_KEYS)
    missing = sorted(REGIME_KEYS - set(spec))
    if unknown or missing:
        raise ProfileError(f"Profile '{profile.name}': regime: {'unknown key(s) ' + str(unknown) if unknown else ''}"
                           f"{'; ' if unknown and missing else ''}{'missing key(s) ' + str(missing) if missing else ''}; "
                           f"the section holds {', '.join(sorted(REGIME_KEYS))} (irmlib/studies/regime.py).")
    return spec


def make_cell(profile: Profile, arm: str, lr: float, schedule: str, steps: int, track_every: int) -> Cell:
    """A cell's profile: the arm's overrides, the rate, the schedule, a fixed step budget (no early
    stopping by validation loss), tracked every `track_every` steps."""
    spec = regime_spec(profile)
    timing = spec["stable"] if schedule == "stable" else PLAIN_SCHEDULE
    overrides = {**spec["arms"][arm], **timing, "lr": lr, "max_steps": steps, "epochs": steps, "patience": steps,
                 "track_every": track_every}
    name = f"{arm} {lr:.0e} {schedule}" + (f" {steps} steps" if steps != spec["steps"] else "")
    variant = f"regime{arm}-lr{lr:.0e}-{schedule}-{steps}"
    return Cell(name, arm, float(lr), schedule, steps, with_overrides(profile, overrides), variant)


def regime_cells(profile: Profile) -> list[Cell]:
    """The map's cells: every arm at every rate with the stable schedule, then at every plain rate without it."""
    spec = regime_spec(profile)
    return [make_cell(profile, arm, lr, schedule, spec["steps"], spec["track_every"])
            for arm in spec["arms"] for schedule, rates in (("stable", spec["rates"]), ("plain", spec["plain_rates"])) for lr in rates]


def long_cell(profile: Profile, table: pd.DataFrame) -> tuple[Cell, str]:
    """The long cell: its arm at the highest rate whose cell with the stable schedule was not
    `unstable`; where none was, the lowest rate, and the reason says so. table: `run_cell` rows
    by cell name."""
    spec = regime_spec(profile)
    long = spec["long"]
    scheduled = table[(table.arm == long["arm"]) & (table.schedule == "stable")]
    stable = scheduled[scheduled.unstable.eq(False)]  # None (not measured) is not stable
    if len(stable):
        lr, why = float(stable.lr.max()), f"the highest rate at which arm {long['arm']}'s cell with the stable schedule was not unstable"
    else:
        lr, why = float(min(spec["rates"])), f"every cell of arm {long['arm']} with the stable schedule was unstable: the lowest rate"
    return make_cell(profile, long["arm"], lr, "stable", long["steps"], long["track_every"]), why


def run_cell(host: Host, profile: Profile, cell: Cell, rows: list[dict], probe: Probe) -> dict:
    """Train (or load) one cell on the regime's emotion and seed, and read it: its health
    (irmlib.profile_runs.run_health), the tracker's last row (index and layer share, dominant
    index), whether it is striated, and `tracking` (its tracked rows)."""
    spec = regime_spec(profile)
    summary = train_for_profile(host, cell.profile, spec["emotion"], spec["seed"], rows, progress=False, variant=cell.variant,
                                probe=probe)
    directory = runs.run_dir(profile, spec["emotion"], spec["seed"], cell.variant)
    tracking = read_tracking(directory)
    last = tracking.iloc[-1]
    health = run_health(directory, profile.analysis)
    shares = {"index_share": float(last.index_share), "layer_share": float(last.layer_share)}
    return {"cell": cell.name, "arm": cell.arm, "lr": cell.lr, "schedule": cell.schedule, "steps": summary["steps"],
            "stopped": summary["stopped"], **health, **shares, "dominant_index": int(last.dominant_index),
            "striated": is_striated(shares, profile.analysis.striated_share_ratio), "tracking": tracking}


def cell_tone(host: Host, judge: EmotionJudge, profile: Profile, cell: Cell, questions: list[str]) -> dict:
    """The tone of a cell's IRM (the one every notebook reads) on `questions`, greedy, against the
    base host on the same prompts (irmlib.scoring.tone_table): its row."""
    spec = regime_spec(profile)
    irm = load_irm(runs.read_checkpoint(profile, spec["emotion"], spec["seed"], cell.variant), host, device=host.device).eval()
    table = tone_table(host, judge, {cell.name: irm}, spec["emotion"], questions, cell.profile.prompt_format,
                       profile.max_new_tokens, profile.analysis.min_scored_texts)
    row = table.loc[cell.name]
    return {key: row[key] for key in ("p_target", "p_target_change", "p_target_change_low", "p_target_change_high", "scored",
                                      "verdict", "text")} | {"p_target_base": table.loc["base", "p_target"]}


def cell_effect(host: Host, profile: Profile, cell: Cell, index: int, probe: Probe, gains: pd.Series,
                rules: EffectRules = EffectRules()) -> dict:
    """Does a cell's dominant index do anything (irmlib.index_effect)? Its IRM on the probe with the
    index alone, masked, and its write moved to the next index by `gains` (the host's mean
    layer-norm gain per index, irmlib.residual.norm_gains), the objective's loss at the cell's label
    shift: `effect_record`."""
    spec = regime_spec(profile)
    irm = load_irm(runs.read_checkpoint(profile, spec["emotion"], spec["seed"], cell.variant), host, device=host.device).eval()
    return dominant_index_effect(host, irm, probe.batch, index, gains, cell.profile.train.objective_spec.label_shift, rules)


def recommendation(table: pd.DataFrame) -> dict:
    """The cell the default recipe should take: among unflagged cells whose IRM raised the target
    emotion in fluent text, the one with the largest change; where none did, none is recommended
    for tone, and the unflagged cell with the highest rate is named (None
    where no cell stayed unflagged). table: `run_cell` rows with their tone, by cell name."""
    ok = table[table.flag.map(is_evidence)]
    aligned = ok[(ok.get("verdict") == "raised") & (ok.get("text") == "fluent")] if "verdict" in ok else ok.iloc[:0]
    if len(aligned):
        best = aligned.p_target_change.astype(float).idxmax()
        return {"cell": best, "why": "unflagged, and its IRM raised the target emotion in fluent text (the largest change)"}
    if len(ok):
        return {"cell": None, "highest_unflagged": ok.lr.astype(float).idxmax(),
                "why": "no unflagged cell raised the target emotion in fluent text; the unflagged cell with the highest rate is named"}
    return {"cell": None, "highest_unflagged": None, "why": "no cell stayed unflagged"}


def claims(table: pd.DataFrame, long: dict | None, ratio: float, effects: pd.DataFrame | None = None,
           much: float = EffectRules.much) -> list[Claim]:
    """Notebook 07's claims: (1) some cell of the map trains stably (not `unstable`); (2) a
    striation forms under stable training (a stable cell, the long one included, with index share
    at least `ratio` x its layer share); (3) the long cell, if stable, has its dominant index
    settle (held over the last analysis.settled_window of its tracked steps); (4) some cell with
    neither flag raises the target emotion in fluent text; (5) in every stable cell the dominant
    index carries the IRM's effect: masking it keeps at most 1 - `much` of the IRM's next-token
    distribution (irmlib.index_effect). Each stable cell is listed with its flag, so a host-damaged
    one shows as such. table: the map's cells (`run_cell` with tone), by cell name; long: the long
    cell's row, or None where it did not run; effects: `effect_table` of the stable cells."""
    cells = pd.concat([table, pd.DataFrame([long]).set_index("cell")]) if long is not None else table
    stable = cells[cells.unstable.eq(False)]  # None (not measured) is not stable
    ok = cells[cells.flag.map(is_evidence)]

    def listing(rows: pd.DataFrame) -> str:
        return "; ".join(f"{name} ({row.flag}; index share {row.index_share:.2f} vs layer share {row.layer_share:.2f}, "
                         f"index {row.dominant_index}; yardstick {fmt(row.yardstick_host, 3)} -> {fmt(row.yardstick_end, 3)})"
                         for name, row in rows.iterrows()) or "none"

    unstable = cells[~cells.unstable.eq(False)]
    found = [Claim("1", "Some cell of the map trains stably (not unstable)", verdict(bool(len(stable))),
                   f"{len(stable)} of {len(cells)} cells stable, {len(ok)} with neither flag. Stable: {listing(stable)}. "
                   f"Unstable: {', '.join(unstable.index) or 'none'}.")]
    striated = stable[[is_striated(row, ratio) for _, row in stable.iterrows()]] if len(stable) else stable
    found.append(Claim("2", f"A striation forms under stable training (index share >= {ratio:g} x layer share)",
                       verdict(bool(len(striated)) if len(stable) else None),
                       f"Striated stable cells: {listing(striated)}." if len(stable) else "No cell was stable."))
    if long is None or long["unstable"] is not False:
        why = "the long cell did not run" if long is None else f"the long cell was {long['flag']}"
        found.append(Claim("3", "Under stable training the dominant index settles", verdict(None), f"Not tested: {why}."))
    else:
        unknown = "Not tested: fewer than two tracked steps in the last window. " if long["settled"] is None else ""
        found.append(Claim("3", "Under stable training the dominant index settles", verdict(long["settled"]),
                           f"{unknown}{long['cell']}: final index {long['final_index']}, held since step {long['held_since']} of "
                           f"{long['steps']}; index share {long['index_share']:.2f} vs layer share {long['layer_share']:.2f}."))
    # Without a tone column (no cell was unflagged, so none was measured) no cell is toned.
    toned = ok[ok.verdict.notna()] if "verdict" in ok else ok.iloc[:0].assign(verdict=None, text=None)
    tested = toned[~toned.verdict.astype(str).str.startswith(NOT_TESTED)]
    raised = tested[(tested.verdict == "raised") & (tested.text == "fluent")]
    found.append(Claim("4", "Some unflagged cell raises the target emotion in fluent text", verdict(bool(len(raised)) if len(tested) else None),
                       "; ".join(f"{name}: change {fmt(row.p_target_change, 4, True)} [{fmt(row.p_target_change_low, 4, True)}, "
                                 f"{fmt(row.p_target_change_high, 4, True)}] over {int(row.scored)} scored texts, {row.verdict}, text {row.text}"
                                 for name, row in toned.iterrows()) + "." if len(toned) else "No unflagged cell's tone was measured."))
    effects = effects if effects is not None else pd.DataFrame(columns=["verdict"])
    held, evidence = carries_effect(effects, much)
    found.append(Claim("5", f"In every stable cell the dominant index carries the IRM's effect (masking it keeps at most {1 - much:g} "
                            f"of the IRM's next-token distribution)", verdict(held), evidence))
    return found


def cell_table(results: list[dict]) -> pd.DataFrame:
    """The cells' rows (`run_cell`, with their tone where measured), by cell name, without the curves."""
    return pd.DataFrame([{k: v for k, v in r.items() if k != "tracking"} for r in results]).set_index("cell")


def curves(results: list[dict]) -> pd.DataFrame:
    """Every cell's tracked rows in one long table (step, cell as `run`, arm, flag, the metrics)."""
    return pd.concat([r["tracking"].assign(run=r["cell"], arm=r["arm"], flag=r["flag"]) for r in results], ignore_index=True)

