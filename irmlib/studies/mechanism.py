"""Notebook 06's study: what makes one index dominate? The predictions made before training
(gradient sign, norm gains, token frequency), the arms (one ingredient of the paper's code
each), their striation metrics and tone, what the host does with each arm's dominant index,
and the notebook's claims."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import binom

from .. import runs
from ..claims import Claim, NOT_TESTED, fmt, plural, verdict
from ..health import Probe, is_evidence
from ..host import Host
from ..index_effect import EffectRules, carries_effect, dominant_index_effect, effect_table
from ..inject import Injection
from ..irm import IRM, load_irm
from ..judge import EmotionJudge
from ..objective import lm_loss
from ..profile_runs import HEALTH_COLUMNS, arm_variant, run_health, train_for_profile
from ..prompts import decode_tokens
from ..scoring import tone_table
from ..train import read_tracking
from ..striation import (index_importance, magnitude_matrix, rank_of, shared_dominant_index, signed_matrix,
                         striation_metrics, top_k_agreement)


def gradient_sign_consistency(host: Host, irm: IRM, batches: Sequence[dict], label_shift: int = 1) -> np.ndarray:
    """Per hidden index, |sum g| / sum |g| of the loss gradient g with respect to the injected
    vectors, over batches, tokens and layers: 1 when every position pushes the same way.
    batches: collated dicts (input_ids, attention_mask, labels). Returns [hidden]."""
    injection = Injection(host, irm)
    signed = absolute = 0.0
    try:
        for batch in batches:
            irm.zero_grad(set_to_none=True)
            loss = lm_loss(host, batch["input_ids"].to(host.device), batch["attention_mask"].to(host.device),
                           batch["labels"].to(host.device), label_shift)
            vectors = injection.vectors
            (grad,) = torch.autograd.grad(loss, vectors)
            grad = grad.double().flatten(0, 2)  # [positions x layers, hidden]
            signed = signed + grad.sum(0)
            absolute = absolute + grad.abs().sum(0)
    finally:
        injection.remove()
    return (signed.abs() / absolute.clamp_min(1e-30)).cpu().numpy()


def token_counts(token_ids: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """How often each token id occurs in the given sequences: [vocab]."""
    counts = Counter(t for ids in token_ids for t in ids)
    out = np.zeros(vocab_size)
    for token, n in counts.items():
        if token < vocab_size:
            out[token] = n
    return out


def frequency_alignment(host: Host, counts: np.ndarray) -> np.ndarray:
    """Per hidden index j, the Pearson correlation over the vocabulary between the LM head's
    column j (the logit change per unit written at j) and log(1 + token count): [hidden]."""
    weight = host.lm_head.weight.detach().double().cpu().numpy()  # [vocab, hidden]
    log_freq = np.log1p(counts[: weight.shape[0]])
    w = weight - weight.mean(0)
    f = log_freq - log_freq.mean()
    return (w.T @ f) / (np.linalg.norm(w, axis=0) * np.linalg.norm(f) + 1e-30)


def predictions(sign_consistency: np.ndarray, gains: pd.DataFrame, freq_alignment: np.ndarray) -> dict[str, int]:
    """The index each hypothesis names before training: (a) the largest gradient sign consistency;
    (b) the smallest mean layer-norm gain, and the smallest final-norm gain; (c) the largest
    |correlation| of the LM head with log token frequency."""
    return {
        "a_gradient_sign": int(np.argmax(sign_consistency)),
        "b_layer_norm_gain": int(gains.layer_norm_gain.idxmin()),
        "b_final_norm_gain": int(gains.final_norm_gain.idxmin()),
        "c_frequency": int(np.argmax(np.abs(freq_alignment))),
    }


def prediction_sets(sign_consistency: np.ndarray, gains: pd.DataFrame, k: int) -> dict[str, list[int]]:
    """The k indices each hypothesis names before training. (b) a norm knob: the k smallest mean
    layer-norm gains, and apart the k smallest final-norm gains (the two rankings can disagree);
    (d) an inert by-product of Adam: the k largest gradient sign consistencies at initialisation
    (a gradient that keeps one sign, whatever its size)."""
    return {
        "b_smallest_layer_norm_gain": [int(i) for i in gains.layer_norm_gain.nsmallest(k).index],
        "b_smallest_final_norm_gain": [int(i) for i in gains.final_norm_gain.nsmallest(k).index],
        "d_sign_consistent": [int(i) for i in np.argsort(-np.asarray(sign_consistency), kind="stable")[:k]],
    }


def set_hits(sets: dict[str, list[int]], dominant: dict[str, int], hidden: int, alpha: float = 0.05) -> pd.DataFrame:
    """Per predicted set, how many runs' dominant index (`dominant`: run -> index) falls in it,
    against chance: a random index is in a set of k with probability k / hidden; p is the one-sided
    binomial probability of at least that many hits. One row per set."""
    rows = {}
    for name, members in sets.items():
        k, n = len(members), len(dominant)
        hit_runs = [run for run, index in dominant.items() if index in members]
        rows[name] = {"k": k, "runs": n, "hits": len(hit_runs), "chance": k / hidden, "expected_hits": n * k / hidden,
                      "p_value": float(binom.sf(len(hit_runs) - 1, n, k / hidden)) if n else float("nan"),
                      "verdict": verdict(None if n == 0 else bool(binom.sf(len(hit_runs) - 1, n, k / hidden) < alpha)),
                      "hit_runs": hit_runs}
    return pd.DataFrame(rows).T


def set_claims(hits: pd.DataFrame) -> list[Claim]:
    """(3, set) per predicted set (`set_hits`): the runs' dominant indices fall in it more often
    than chance (one-sided binomial, the set's verdict)."""
    return [Claim(f"3, set {name}", f"The dominant index falls in hypothesis set {name} ({row.k} indices) more often than chance",
                  row.verdict, f"{row.hits} of {plural(row.runs, 'run')} ({', '.join(row.hit_runs) or 'none'}) against "
                               f"{row.expected_hits:.2f} expected (chance {row.chance:.4f} per run); one-sided binomial p {row.p_value:.3g}.")
            for name, row in hits.iterrows()]


def index_profile(host: Host, index: int, gains: pd.DataFrame, massive_ratio: np.ndarray, freq_alignment: np.ndarray,
                  top: int = 10) -> dict:
    """What the host does with one hidden index: its rank by smallest norm gain (1 = smallest), its
    massive-activation ratio and rank (1 = largest; irmlib.residual.RANK_ORDER), its frequency
    alignment, and the tokens the LM head promotes and suppresses along +index (is EOS among them?)."""
    column = host.lm_head.weight.detach()[:, index].float().cpu()
    tokenizer = host.tokenizer
    promoted = torch.topk(column, top).indices.tolist()
    suppressed = torch.topk(-column, top).indices.tolist()
    eos = tokenizer.eos_token_id
    return {
        "index": index,
        "rank_smallest_layer_norm_gain": rank_of(-gains.layer_norm_gain.to_numpy(), index),
        "rank_smallest_final_norm_gain": rank_of(-gains.final_norm_gain.to_numpy(), index),
        "massive_ratio": float(massive_ratio[index]),
        "rank_largest_massive_ratio": rank_of(massive_ratio, index),
        "frequency_alignment": float(freq_alignment[index]),
        "promoted": decode_tokens(tokenizer, promoted),
        "suppressed": decode_tokens(tokenizer, suppressed),
        "eos_rank_along_index": int((column > column[eos]).sum()) + 1,
        "eos_in_top_promoted": eos in promoted,
        "eos_in_top_suppressed": eos in suppressed,
    }


@torch.inference_mode()
def eos_probability(host: Host, batch: dict, irm: IRM | None = None) -> float:
    """Mean probability the host gives EOS as the next token over the real tokens of a batch
    (collated dict), with `irm` injected or without one."""
    injection = Injection(host, irm) if irm is not None else None
    try:
        mask = batch["attention_mask"].to(host.device)
        logits = host.model(input_ids=batch["input_ids"].to(host.device), attention_mask=mask, use_cache=False).logits
        p_eos = logits.float().softmax(-1)[..., host.tokenizer.eos_token_id]
        return float(p_eos[mask.bool()].mean())
    finally:
        if injection is not None:
            injection.remove()


def arm_runs(profile) -> list[tuple[str, str, int]]:
    """(arm, emotion, seed) of every run of notebook 06, replicated arms first.

    An arm in `mechanism.replicated` runs for every (emotion, seed) of `emotions` x `seeds`; one in
    `mechanism.runs: {arm: n}` for the first n of them in that order (each emotion's seeds, then
    the next emotion's: 2 is one emotion and two seeds); any other once, on the first."""
    spec = profile.mechanism or {}
    emotions, seeds = spec.get("emotions", profile.emotions), spec.get("seeds", profile.seeds)
    pairs = [(emotion, seed) for emotion in emotions for seed in seeds]
    replicated, counts, arms = spec.get("replicated", []), spec.get("runs", {}), spec.get("arms", {})
    unknown = sorted(set(counts) - set(arms))
    if unknown:
        raise ValueError(f"mechanism.runs names {unknown}, not arms; choose from {', '.join(arms)}.")
    bad = {arm: n for arm, n in counts.items() if not (isinstance(n, int) and 1 <= n <= len(pairs))}
    if bad:
        raise ValueError(f"mechanism.runs: {bad}; each is a number of runs from 1 to {len(pairs)} (emotions x seeds).")
    runs = [(arm, emotion, seed) for arm in replicated for emotion, seed in pairs]
    return runs + [(arm, emotion, seed) for arm in arms if arm not in replicated for emotion, seed in pairs[:counts.get(arm, 1)]]


def run_arm(host: Host, profile, arms: dict, arm: str, emotion: str, seed: int, rows: list[dict], probe: Probe,
            gains: pd.Series | None = None, rules: EffectRules = EffectRules()) -> dict:
    """Train (or load) one run of an arm and measure, on its emotion's probe texts (`probe`, the
    texts its tracker read while it trained), the striations of the IRM every notebook reads
    (irmlib.runs.read_checkpoint), and its health (irmlib.profile_runs.run_health). Given `gains`
    (the host's mean layer-norm gain per index, irmlib.residual.norm_gains), also whether its
    dominant index does anything (irmlib.index_effect, by `rules`): `dominant_index_effect`.

    Returns the run's name, arm, training summary, health, striation metrics, `matrix` (mean
    |output|, [layers, hidden]), `signed` (signed mean, [layers, hidden]), `tracking` (DataFrame
    of the tracked metrics by step) and `irm_dir`, the IRM's directory (irmlib.irm.load_irm): the
    IRM itself is not kept, so a study of many runs holds one IRM at a time.
    """
    arm_profile = arms[arm]
    variant = arm_variant(profile, arm_profile, arm)
    summary = train_for_profile(host, arm_profile, emotion, seed, rows, progress=False, variant=variant, probe=probe)
    directory = runs.run_dir(profile, emotion, seed, variant)
    checkpoint = runs.read_checkpoint(profile, emotion, seed, variant)
    irm = load_irm(checkpoint, host, device=host.device).eval()
    outputs = probe.tracker().outputs(irm)
    matrix = magnitude_matrix(outputs)
    metrics = striation_metrics(matrix, profile.analysis.top_k)
    health = run_health(directory, profile.analysis)
    effect = {}
    if gains is not None:
        index = metrics["dominant_index"]
        effect["dominant_index_effect"] = dominant_index_effect(host, irm, probe.batch, index, gains,
                                                                arm_profile.train.objective_spec.label_shift, rules)
    return {"run": f"{arm}:{directory.name}", "arm": arm, "emotion": emotion, "seed": seed,
            **{k: summary[k] for k in ("steps", "best_val_loss")}, **{k: health[k] for k in HEALTH_COLUMNS}, **metrics,
            "matrix": matrix, "signed": signed_matrix(outputs), "tracking": read_tracking(directory), "irm_dir": checkpoint, **effect}


def subset_arms(profile) -> list[str]:
    """The arms of `mechanism.arms` that inject a subset of the host's layers (an `injected_layers`
    override): the paper's runs spanned such subsets (its branch 1512_testing: layers 0-7, 8-15,
    16-23, 24-31, every 4th, and all 32)."""
    return [arm for arm, overrides in (profile.mechanism or {}).get("arms", {}).items() if overrides.get("injected_layers") is not None]


def layer_subset_summary(results: list[dict], arms: dict, subsets: Sequence[str], reference: str = "A") -> pd.DataFrame:
    """Per run of the layer-subset arms and of `reference` (every layer) on the same emotions and
    seeds: the layers injected, the flag and the dominant index. One row per run, by run name;
    flagged runs are listed with their flag (`layer_subset_claim` reads only unflagged ones)."""
    pairs = {(r["emotion"], r["seed"]) for r in results if r["arm"] in subsets}
    rows = {}
    for r in results:
        if r["arm"] in subsets or (r["arm"] == reference and (r["emotion"], r["seed"]) in pairs):
            layers = arms[r["arm"]].irm.get("injected_layers")
            rows[r["run"]] = {"arm": r["arm"], "emotion": r["emotion"], "seed": r["seed"],
                              "layers": "all" if layers is None else ", ".join(str(i) for i in layers),
                              "flag": r["flag"], "dominant_index": int(r["dominant_index"]),
                              "index_share": r["index_share"], "layer_share": r["layer_share"]}
    return pd.DataFrame(rows).T


def layer_subset_claim(table: pd.DataFrame, hidden: int) -> Claim:
    """(5) The dominant index is the same whichever layers are injected: every unflagged run of
    `layer_subset_summary` (the subset arms and the all-layer reference) has one dominant index.
    Not tested with fewer than two arms' unflagged runs. Chance: a random index per run matches a
    given one with probability 1 / hidden."""
    kept = table[table.flag.map(is_evidence)] if len(table) else table
    named = "; ".join(f"{run} (layers {row.layers}): {row.dominant_index}" + ("" if is_evidence(row.flag) else f", {row.flag}, not counted")
                      for run, row in table.iterrows()) if len(table) else "no layer-subset arm ran"
    tested = len(kept) > 1 and kept.arm.nunique() > 1
    same = tested and kept.dominant_index.nunique() == 1
    return Claim("5", "The dominant index is the same whichever layers are injected", verdict(same if tested else None),
                 f"Dominant index per run: {named}. {kept.dominant_index.nunique() if len(kept) else 0} distinct among "
                 f"{plural(len(kept), 'unflagged run')} (chance that a run repeats a given index: 1/{hidden})."
                 + ("" if tested else " Not tested: it needs unflagged runs of two arms."))


def run_effects(results: list[dict]) -> pd.DataFrame:
    """`effect_table` of the runs that measured their dominant index's effect (`run_arm` given
    gains), by run name, with each run's arm and flag."""
    measured = {r["run"]: r for r in results if "dominant_index_effect" in r}
    table = effect_table({run: r["dominant_index_effect"] for run, r in measured.items()})
    return table.assign(arm=[measured[run]["arm"] for run in table.index], flag=[measured[run]["flag"] for run in table.index])


def effect_claim(effects: pd.DataFrame, much: float) -> Claim:
    """(6) In every unflagged run the dominant index carries the IRM's effect: masking it keeps at
    most 1 - `much` of the IRM's next-token distribution (irmlib.index_effect.carries_effect).
    `effects`: `run_effects`; flagged runs are not evidence."""
    kept = effects[effects.flag.map(is_evidence)] if len(effects) else effects
    held, evidence_text = carries_effect(kept, much, "unflagged run")
    return Claim("6", f"In every unflagged run the dominant index carries the IRM's effect (masking it keeps at most {1 - much:g} "
                      f"of the IRM's next-token distribution)", verdict(held), evidence_text)


def evidence(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """The runs that count as an arm's evidence (neither unstable nor host-damaged: flag "ok") and
    the others, shown apart and never pooled."""
    return [r for r in results if is_evidence(r["flag"])], [r for r in results if not is_evidence(r["flag"])]


def arm_summary(results: list[dict], hidden: int, k: int = 5) -> dict:
    """One arm's runs (from `run_arm`) in numbers, pooled over its evidence only (`evidence`: runs
    flagged unstable or host-damaged are counted and named, never pooled): mean shares, vertical
    continuity and yardstick (host, end: nats, comparable across arms), the shared dominant index
    (None where no index dominates two runs, and with fewer than two runs), the per-run ones, top-1 / top-k agreement with the
    number of run pairs and the chance rate of each (a random index per run: 1/hidden and
    k/hidden), NaN with fewer than two runs, and the objective's own best validation loss (its
    objective's: not comparable across arms). An arm with no evidence has NaN and None."""
    kept, flagged = evidence(results)
    importances = {r["run"]: index_importance(r["matrix"]) for r in kept}
    several = len(kept) > 1
    top1 = top_k_agreement(importances, 1) if several else float("nan")
    pairs = len(kept) * (len(kept) - 1) // 2

    def mean(key: str) -> float:
        values = [r[key] for r in kept if r.get(key) is not None]
        return float(np.mean(values)) if values else float("nan")

    return {
        "runs": len(kept),
        "flagged": {r["run"]: r["flag"] for r in flagged},
        "index_share": mean("index_share"),
        "layer_share": mean("layer_share"),
        "vertical_continuity": mean("vertical_continuity"),
        "yardstick_host": mean("yardstick_host"),
        "yardstick_end": mean("yardstick_end"),
        "shared_dominant_index": shared_dominant_index({r["run"]: r["matrix"] for r in kept}) if several else None,
        "dominant_indices": [int(r["dominant_index"]) for r in kept],
        "top1_agreement": top1,
        f"top{k}_agreement": top_k_agreement(importances, k) if several else float("nan"),
        "pairs": pairs,
        "top1_agreeing_pairs": round(top1 * pairs) if several else 0,
        "top1_chance": 1 / hidden, f"top{k}_chance": k / hidden,
        "objective_best_val_loss": mean("best_val_loss"),
    }


def curve_verdict(tracking: pd.DataFrame, column: str = "index_share", window: int = 3, tolerance: float = 0.02) -> dict:
    """Whether a tracked metric had flattened by the end of training: over the last `window`
    tracked points of every run, it moved by less than `tolerance` (mean over runs)."""
    if tracking.empty:
        return {"curve": "not tracked", "last_step": 0}
    moves = [abs(g[column].iloc[-1] - g[column].iloc[-window]) for _, g in tracking.groupby("run") if len(g) >= window]
    flat = bool(moves) and float(np.mean(moves)) < tolerance
    return {"curve": "had flattened" if flat else "was still moving", "last_step": int(tracking.step.max()),
            f"{column}_final_move": float(np.mean(moves)) if moves else float("nan")}


def representative_runs(results: list[dict], emotion: str) -> dict[str, dict]:
    """Per arm (in the order of `results`), the run that stands for it where one run is shown (its
    heatmap, its tone): its first run of `emotion` that counts as evidence (flag "ok"), else its
    first run of `emotion`, flagged (and shown with its flag), else its first run."""
    chosen = {}
    for arm in dict.fromkeys(r["arm"] for r in results):
        own = [r for r in results if r["arm"] == arm]
        of_emotion = [r for r in own if r["emotion"] == emotion] or own
        chosen[arm] = next((r for r in of_emotion if is_evidence(r["flag"])), of_emotion[0])
    return chosen


def arm_tone(host: Host, judge: EmotionJudge, irms: dict[str, object], arms: dict, emotion: str, questions: list[str], max_new_tokens: int,
             min_scored: int, shown_runs: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """The tone of each arm's IRM (tone_table), each arm prompted as it was trained:
    arms that share a prompt format share one base-host row, "base (<format>)", and each arm's
    paired change is against the base host prompted the same way.

    irms: {arm: IRM}; arms: {arm: profile} (irmlib.profile_runs.arm_profiles); shown_runs: {arm:
    (run name, flag)} of the run each IRM is, shown as `run` and `flag` (a flagged run's tone is
    not evidence: `claims` says not tested). One row per base and per "arm <name>".
    """
    tables = []
    for prompt_format in dict.fromkeys(arms[arm].prompt_format for arm in irms):
        group = {f"arm {arm}": irm for arm, irm in irms.items() if arms[arm].prompt_format == prompt_format}
        table = tone_table(host, judge, group, emotion, questions, prompt_format, max_new_tokens, min_scored)
        tables.append(table.rename(index={"base": f"base ({prompt_format})"}).assign(prompt_format=prompt_format))
    tone = pd.concat(tables)
    if shown_runs is not None:
        shown = [shown_runs[name.removeprefix("arm ")] if name.startswith("arm ") else ("", "") for name in tone.index]
        tone["run"], tone["flag"] = [run for run, _ in shown], [flag for _, flag in shown]
    return tone


def prediction_ranks(predicted: dict[str, int], results: list[dict]) -> pd.DataFrame:
    """Per hypothesis' index and per run: the index's rank in the run's importance (1 = the
    dominant index). One row per hypothesis, one column per run (from `run_arm`)."""
    return pd.DataFrame({r["run"]: {name: rank_of(index_importance(r["matrix"]), index) for name, index in predicted.items()}
                         for r in results}, index=list(predicted), dtype=float)


def prediction_verdict(ranks: Sequence[int], hidden: int, k: int, alpha: float = 0.05) -> dict:
    """Whether a predicted index ranks above chance in the runs' importance. A random index ranks
    in a run's top k with probability k/hidden; the prediction holds where the number of runs
    with it in the top k is improbable under that chance (one-sided binomial test, p < alpha).
    Returns the counts (dominant, top k), the median rank, chance's, p and the verdict."""
    ranks = np.asarray(list(ranks), dtype=int)
    n, top = len(ranks), int((ranks <= k).sum())
    p = float(binom.sf(top - 1, n, k / hidden)) if n else float("nan")
    return {"runs": n, "dominant_in": int((ranks == 1).sum()), f"top{k}_in": top, "median_rank": float(np.median(ranks)) if n else float("nan"),
            "chance_median_rank": (hidden + 1) / 2, f"top{k}_chance": k / hidden, "p_value": p,
            "verdict": verdict(None if n == 0 else bool(p < alpha))}


def claims(per_arm: dict[str, dict], predicted: dict[str, int], ranks: pd.DataFrame, tone: pd.DataFrame, hidden: int, analysis) -> list[Claim]:
    """Notebook 06's claims: (1) the paper code's objective (arm A) makes one shared index dominate
    and the fixed one (B) does not: an arm shares an index when its top-1 agreement reaches
    analysis.shared_index_agreement and its index share is analysis.striated_share_ratio x its
    layer share; (2) in Adam's rotated basis (E) the striation fades: E's index share under A's
    divided by that ratio; (3) per hypothesis, its predicted index ranks above chance
    (`prediction_verdict`); (4) per arm, its IRM raises the target emotion in fluent text (not
    tested where the run scored is flagged: the tone table's `flag`). Arm A without a striation
    leaves (2) not tested."""
    ratio, k = analysis.striated_share_ratio, analysis.top_k

    def shares_index(s: dict) -> bool:
        return bool(s["shared_dominant_index"] is not None and s["top1_agreement"] >= analysis.shared_index_agreement
                    and s["index_share"] >= ratio * s["layer_share"])

    def describe(arm: str) -> str:
        s = per_arm[arm]
        shared = "no shared index" if s["shared_dominant_index"] is None else f"shared index {s['shared_dominant_index']}"
        return (f"arm {arm} ({plural(s['runs'], 'run')}): index share {s['index_share']:.2f} vs layer share {s['layer_share']:.2f}, "
                f"{shared} (per run {s['dominant_indices']}), top-1 agreement {fmt(s['top1_agreement'])} over "
                f"{plural(s['pairs'], 'pair')} (chance {s['top1_chance']:.4f})")

    a, b = per_arm.get("A"), per_arm.get("B")
    found = [Claim("1", "The paper code's objective makes one shared index dominate and the fixed one does not",
                   verdict(None if a is None or b is None or a["runs"] < 2 or b["runs"] < 2 else shares_index(a) and not shares_index(b)),
                   "; ".join(describe(arm) for arm in ("A", "B") if arm in per_arm) + "."
                   + ("" if a is None or b is None or min(a["runs"], b["runs"]) >= 2 else " Agreement needs two runs of each arm."))]
    if "E" in per_arm and a is not None:
        e = per_arm["E"]
        measured = e["runs"] > 0 and a["runs"] > 0  # an arm whose every run is flagged has no evidence
        # A striation can only fade where arm A has one.
        a_striated = measured and a["index_share"] >= ratio * a["layer_share"]
        found.append(Claim("2", "With Adam in a rotated basis (E) the striation fades",
                           verdict(bool(e["index_share"] < a["index_share"] / ratio) if a_striated else None),
                           f"Index share E {e['index_share']:.2f} against A {a['index_share']:.2f} (fades: under A's / {ratio:g}); "
                           f"E's dominant indices {e['dominant_indices']}."
                           + ("" if a_striated or not measured else
                              f" Arm A has no striation to fade (index share {a['index_share']:.2f} under {ratio:g} x its layer share "
                              f"{a['layer_share']:.2f}).")))
    for name, index in predicted.items():
        result = prediction_verdict(ranks.loc[name].to_numpy(), hidden, k)
        found.append(Claim(f"3, {name}", f"Hypothesis {name}'s index ({index}) ranks above chance in the runs' importance", result["verdict"],
                           f"Dominant in {result['dominant_in']} of {plural(result['runs'], 'run')}, in the top {k} of "
                           f"{result[f'top{k}_in']} (chance {result[f'top{k}_chance']:.4f} per run, one-sided binomial p "
                           f"{result['p_value']:.3g}); median rank {result['median_rank']:g} against chance's {result['chance_median_rank']:g}."))
    for name, row in tone[tone.verdict != "base"].iterrows():
        flag = row.get("flag", "ok")
        flagged = isinstance(flag, str) and not is_evidence(flag)  # a flagged run is not evidence, whatever its text
        held = None if flagged or str(row.verdict).startswith(NOT_TESTED) else bool(row.verdict == "raised" and row.text == "fluent")
        found.append(Claim(f"4, {name}", f"{name}'s IRM raises the target emotion in fluent text", verdict(held),
                           (f"Run {row.run} is flagged {flag}: not evidence. " if flagged else "")
                           + f"p_target {fmt(row.p_target)}, change {fmt(row.p_target_change, 4, True)} "
                           f"[{fmt(row.p_target_change_low, 4, True)}, {fmt(row.p_target_change_high, 4, True)}] over {int(row.scored)} scored texts: {row.verdict}; median perplexity "
                           f"{fmt(row.median_perplexity, 1)}, distinct-2 {fmt(row.distinct_2)}; text {row.text}."))
    return found
