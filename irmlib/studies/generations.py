"""Notebook 03's study: do the IRMs' generations take on the target emotion, and at what cost in
fluency. Per emotion, the paired change of the judge's target probability (IRM minus base host
on the same prompt), per seed where the seeds disagree, beside text_quality; the alpha sweep of
the trade-off; and the notebook's claims."""

from __future__ import annotations

import pandas as pd

from ..claims import Claim, NOT_TESTED, fmt, verdict
from ..gate import GateRules
from ..health import flagged_runs
from ..host import Host
from ..judge import EmotionJudge
from ..irm import IRM, load_irm
from ..profile_runs import arm_profiles, arm_variant, run_probe, train_for_profile
from ..runs import is_run_of, parse_run_name, read_checkpoint, run_name
from ..scoring import generation_table, mean_ci, score_generations, target_change, text_quality


def alignment_summary(scored: pd.DataFrame, emotions: tuple[str, ...], min_scored: int, rules: GateRules = GateRules(),
                      variant: str = "", flags: dict[str, str] | None = None) -> pd.DataFrame:
    """Per target emotion and mode: the target-emotion probability of base and IRM generations
    (mean and 95% interval over scored prompts, and seeds for the IRM), the paired change and its
    verdict (`change_verdict`, "not tested" under `min_scored` scored texts), the verdict of each
    seed alone (`verdict_per_seed`, "seed 0: raised; seed 1: ..."; `seeds_agree` False where they
    differ), the share of IRM texts too short to score, median perplexity under the base host of
    both and their ratio (`perplexity_ratio` = median IRM / median base, the one perplexity
    statistic), mean distinct-2, `text` (text_quality from the gate: fluent or degenerate) and
    `flagged_runs`: "ok", or the runs read that are flagged (flags: {run name: irmlib.health's flag
    label}; a flagged run is not evidence, so `claims` says not tested).

    scored: rows with `model` ("base" or a run name, runs.run_name), `mode`, `question`, `p_<emotion>`,
    `perplexity`, `distinct_2`, `gate`, `too_short`. variant: the runs read (runs.run_name's
    variant: "" for notebook 02's, "armB" for arm B's); the others are left out.
    """
    flags = flags or {}
    records = []
    for emotion in emotions:
        for mode, part in scored.groupby("mode"):
            base = part[part.model == "base"]
            irm = part[[is_run_of(model, emotion) and parse_run_name(model).variant == variant for model in part.model]]
            record = {"emotion": emotion, "mode": mode}
            for who, frame in (("base", base), ("irm", irm)):
                mean, low, high = mean_ci(frame[f"p_{emotion}"], bounds=(0.0, 1.0), min_n=min_scored)
                record |= {f"p_target_{who}": mean, f"p_target_{who}_low": low, f"p_target_{who}_high": high,
                           f"median_perplexity_{who}": float(frame.perplexity.median()), f"distinct_2_{who}": float(frame.distinct_2.mean())}
            record |= target_change(irm, base, emotion, min_scored)
            seeds = {seed: target_change(group, base, emotion, min_scored)["verdict"]
                     for seed, group in irm.groupby(irm.model.map(lambda m: parse_run_name(m).seed))}
            record |= {"verdict_per_seed": "; ".join(f"seed {seed}: {v}" for seed, v in seeds.items()),
                       "seeds_agree": len(set(seeds.values())) <= 1,
                       "too_short_irm": float(irm.too_short.mean()) if len(irm) else float("nan"),
                       "perplexity_ratio": record["median_perplexity_irm"] / record["median_perplexity_base"],
                       "text": text_quality(irm.gate, rules), "n_irm": len(irm),
                       "flagged_runs": flagged_runs(flags, irm.model)}
            records.append(record)
    return pd.DataFrame(records)


def tone_irms(host: Host, profile, rows: list[dict]) -> dict[str, IRM]:
    """The IRMs of the profile's `tone_arm` (a notebook-06 arm: the fluent tone recipe) for every
    emotion at the first seed, by run name ("anger-seed0-armB"), trained here where missing, in the
    run directories notebook 06 reads (irmlib.profile_runs.arm_variant), each measured on its
    emotion's probe as every run is. Empty without a tone arm. The arm must prompt as the profile
    does: notebook 03 generates every model from one prompt format."""
    if profile.tone_arm is None:
        return {}
    arm_profile = arm_profiles(profile)[profile.tone_arm]
    if arm_profile.prompt_format != profile.prompt_format:
        raise ValueError(f"tone_arm '{profile.tone_arm}' prompts as '{arm_profile.prompt_format}', the profile as "
                         f"'{profile.prompt_format}': choose an arm with the profile's prompt format.")
    variant, seed = arm_variant(profile, arm_profile, profile.tone_arm), profile.seeds[0]
    irms = {}
    for emotion in profile.emotions:
        train_for_profile(host, arm_profile, emotion, seed, rows, progress=False, variant=variant, probe=run_probe(host, profile, emotion, rows))
        irms[run_name(emotion, seed, variant)] = load_irm(read_checkpoint(profile, emotion, seed, variant), host, device=host.device).eval()
    return irms


def recipe_summary(scored: pd.DataFrame, profile, min_scored: int, rules: GateRules = GateRules(),
                   flags: dict[str, str] | None = None) -> pd.DataFrame:
    """`alignment_summary` of notebook 02's runs (recipe "profile") and, where the profile has a
    `tone_arm`, of that arm's runs (recipe "arm <name>"), one below the other with a `recipe`
    column. flags: {run name: flag} (irmlib.profile_runs.flags_of_runs), so a flagged run's tone is said to be no evidence."""
    recipes = {"profile": ""}
    if profile.tone_arm is not None:
        recipes[f"arm {profile.tone_arm}"] = arm_variant(profile, arm_profiles(profile)[profile.tone_arm], profile.tone_arm)
    return pd.concat([alignment_summary(scored, profile.emotions, min_scored, rules, variant, flags).assign(recipe=recipe)
                      for recipe, variant in recipes.items()], ignore_index=True)


def alpha_sweep(host: Host, judge: EmotionJudge, irms: dict, questions: list[str], alphas: tuple[float, ...],
                prompt_format: str, max_new_tokens: int) -> pd.DataFrame:
    """Greedy generations with each IRM scaled by each alpha (0 = the base host), scored.

    irms: {emotion: IRM}. Returns one row per (emotion, alpha, question) with `p_target`,
    `perplexity` (under the base host) and `distinct_2`.
    """
    frames = []
    for emotion, irm in irms.items():
        for alpha in alphas:
            table = generation_table(host, {emotion: irm}, questions, prompt_format, max_new_tokens, modes=("greedy",), scale=alpha)
            scored = score_generations(host, judge, table, prompt_format)
            frames.append(scored.assign(emotion=emotion, alpha=alpha, p_target=scored[f"p_{emotion}"]))
    return pd.concat(frames, ignore_index=True)


def alpha_table(sweep: pd.DataFrame, min_scored: int) -> pd.DataFrame:
    """The alpha sweep per (emotion, alpha), every alpha kept: mean p_target over scored texts
    (NaN where none was scored), `scored` (texts of two words or more), `too_short` (their share
    under two words), median perplexity (NaN where every text was empty), mean distinct-2, and
    `enough` (at least `min_scored` scored texts)."""
    table = sweep.groupby(["emotion", "alpha"], sort=False).agg(
        p_target=("p_target", "mean"), scored=("p_target", "count"), too_short=("too_short", "mean"),
        median_perplexity=("perplexity", "median"), distinct_2=("distinct_2", "mean"))
    table["enough"] = table.scored >= min_scored
    return table


def alpha_ends(table: pd.DataFrame, run_flags: dict[str, str] | None = None) -> pd.DataFrame:
    """Per emotion, the sweep at its smallest and largest alpha, read at those alphas (an empty
    largest alpha shows as NaN with scored 0, never replaced by an earlier alpha), the largest
    alpha with enough scored texts, and `flag`: the swept run's (run_flags: {emotion: flag label};
    a flagged run is shown, not evidence)."""
    run_flags = run_flags or {}
    rows = {}
    for emotion, group in table.groupby(level="emotion", sort=False):
        group = group.droplevel("emotion").sort_index()
        first, last = group.iloc[0], group.iloc[-1]
        usable = group[group.enough]
        rows[emotion] = {"alpha_first": group.index[0], "p_target_first": first.p_target, "median_perplexity_first": first.median_perplexity,
                         "alpha_last": group.index[-1], "p_target_last": last.p_target, "median_perplexity_last": last.median_perplexity,
                         "scored_last": int(last.scored), "largest_scored_alpha": usable.index.max() if len(usable) else float("nan"),
                         "flag": run_flags.get(emotion, "ok")}
    return pd.DataFrame.from_dict(rows, orient="index")


def side_by_side(generations: pd.DataFrame, index: str, columns: str, order: list | None = None, width: int = 80) -> pd.DataFrame:
    """Generated texts as a compact table: one row per `index` value (e.g. question), one column
    per `columns` value (e.g. model), each text on one line and cut to `width` characters ("…"
    marks a cut). order: the columns to show, in this order (default: as they first appear)."""
    def shorten(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    table = generations.assign(text=generations.text.map(shorten)).pivot(index=index, columns=columns, values="text")
    return table[order if order is not None else list(dict.fromkeys(generations[columns]))]


def claims(summary: pd.DataFrame) -> list[Claim]:
    """Notebook 03's claims, per recipe (`recipe_summary`; a summary without a `recipe` column is
    one recipe) and emotion (greedy generations): (1) the IRM raises the target emotion in fluent
    text: held where the paired change is "raised" and text_quality "fluent"; did not hold where it
    did not clearly change, was lowered, or came in degenerate text; not tested where too few texts
    were scored or a run read is flagged (`flagged_runs`). Seeds that disagree are named. (2) alignment costs fluency, where it was raised:
    the median perplexity ratio above 1."""
    found = []
    summary = summary if "recipe" in summary else summary.assign(recipe="profile")
    greedy = summary[summary["mode"] == "greedy"]
    several = greedy.recipe.nunique() > 1
    for _, row in greedy.iterrows():
        emotion = row.emotion
        who = f"{row.recipe} {emotion}" if several else emotion
        flagged = row.get("flagged_runs", "ok") != "ok"  # a flagged run is not evidence, whatever its text
        if flagged or row.verdict.startswith(NOT_TESTED):
            held = None
        else:
            held = row.verdict == "raised" and row.text == "fluent"
        seeds = "" if row.seeds_agree else f" The seeds differ: {row.verdict_per_seed}."
        seeds += f" Flagged, so not evidence: {row.flagged_runs}." if flagged else ""
        found.append(Claim(f"1, {who}", f"The {who} IRM raises p({emotion}) in fluent text", verdict(held),
                           f"p({emotion}) {fmt(row.p_target_base)} (base) -> {fmt(row.p_target_irm)} (IRM), paired change "
                           f"{fmt(row.p_target_change, signed=True)} [{fmt(row.p_target_change_low, signed=True)}, "
                           f"{fmt(row.p_target_change_high, signed=True)}] over "
                           f"{row.scored} scored texts ({row.too_short_irm:.0%} of the IRM's under two words): {row.verdict}; "
                           f"its text: {row.text}.{seeds}"))
    raised = greedy[greedy.verdict == "raised"]
    found.append(Claim("2", "Alignment costs fluency where the tone rose", verdict(None if raised.empty else bool((raised.perplexity_ratio > 1).all())),
                       "No emotion's target probability rose." if raised.empty else
                       "Median perplexity under the base host, IRM over base: "
                       + ", ".join(f"{f'{r.recipe} ' if several else ''}{r.emotion} x{r.perplexity_ratio:.2f}" for _, r in raised.iterrows()) + "."))
    return found
