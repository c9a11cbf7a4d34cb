"""Is the dominant index doing anything? Two hypotheses about the index that dominates an IRM's
output predict opposite results here:

(b) a norm knob. An index whose RMSNorm gains are near zero is nearly invisible to what the host
    computes from the normalised state, yet a large value there inflates the RMS every other
    coordinate is divided by: writing to it shrinks everything else, like a temperature. An
    objective the host cannot fit (the token after next; EOS after EOS) rewards a flatter
    distribution everywhere. Predicts: keeping only the index reproduces much of the IRM's effect
    on the host's entropy and loss, masking it removes much of it, and one temperature per
    position explains most of the KL between the host's distributions with and without the IRM.
(d) an inert by-product of Adam. Adam moves every weight about lr per step whatever its
    gradient's size, so a coordinate along which the loss is nearly flat but whose gradient keeps
    one sign grows with nothing pushing back. Predicts: masking the index changes the loss and the
    entropy hardly at all, and keeping only it reproduces little of the IRM's effect.

`measure_effect` runs the host on a probe batch (irmlib.health.Probe.batch) in five conditions
of the IRM's write (`CONDITIONS`) and reads, in each, the host's next-token entropy and top-1
probability, the yardstick (next-token loss on real tokens), the run objective's loss (its label
shift, on real tokens), the KL from the IRM's distribution and the index's share of the final
residual's squared norm. `effect_verdict` says which hypothesis a run's numbers support, from how
much of the IRM's next-token distribution keeping only the index, or masking it, keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .host import Host
from .inject import inject, layer_output
from .irm import IRM

# host: no IRM; irm: its write as trained; only: the dominant index's write alone (every other
# coordinate zeroed); masked: every coordinate but the dominant index; moved: the dominant index's
# write and that of the index next to it by norm gain swapped (the same sizes, at another index).
CONDITIONS = ("host", "irm", "only", "masked", "moved")
EFFECT_METRICS = ("entropy", "yardstick")  # reported as shares beside the distribution's (nats)
VERDICTS = ("norm knob (b)", "inert (d)", "neither", "no effect to explain")
# effect_table's columns
EFFECT_COLUMNS = ("index", "moved_to", "kl_irm_host", "only_keeps", "masked_keeps", "moved_keeps", "temperature_share",
                  "entropy_host", "entropy_irm", "final_index_share_irm", "final_index_share_only", "verdict")


@dataclass(frozen=True)
class EffectRules:
    """The thresholds a verdict is judged by (the profile's `analysis:` effect_* fields).

    min_change: KL(irm || host) (nats) below which the IRM has no effect to explain;
    much / little: shares of the IRM's effect that count as much of it / hardly any."""

    min_change: float = 0.05
    much: float = 0.5
    little: float = 0.2


def next_gain_index(gains: np.ndarray, index: int) -> int:
    """The index right after `index` when every index is ordered by smallest gain (the one right
    before, if `index` has the largest): where `moved` puts the dominant index's write."""
    order = np.argsort(np.asarray(gains), kind="stable")
    position = int(np.flatnonzero(order == index)[0])
    return int(order[position + 1] if position + 1 < len(order) else order[position - 1])


def write_transform(condition: str, index: int, moved_to: int | None = None):
    """The change `condition` makes to the IRM's output [batch, tokens, injected_layers, hidden]
    (irmlib.inject.Injection's transform), None for `host` and `irm`."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition '{condition}' unknown; choose one of {', '.join(CONDITIONS)}.")
    if condition == "moved" and (moved_to is None or moved_to == index):
        raise ValueError(f"'moved' needs another index to move index {index}'s write to, got {moved_to!r}.")

    def only(vectors):
        kept = torch.zeros_like(vectors)
        kept[..., index] = vectors[..., index]
        return kept

    def masked(vectors):
        out = vectors.clone()
        out[..., index] = 0
        return out

    def moved(vectors):
        out = vectors.clone()
        out[..., [index, moved_to]] = vectors[..., [moved_to, index]]
        return out

    return {"only": only, "masked": masked, "moved": moved}.get(condition)


@torch.inference_mode()
def _run(host: Host, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The host's logits [batch, tokens, vocab] and the residual after its last layer (before the
    final norm) [batch, tokens, hidden], both float32, with whatever IRM is injected."""
    seen = {}
    hook = host.layers[-1].register_forward_hook(lambda module, args, output: seen.update(h=layer_output(output)))
    try:
        logits = host.model(input_ids=batch["input_ids"].to(host.device), attention_mask=batch["attention_mask"].to(host.device),
                            use_cache=False).logits
    finally:
        hook.remove()
    return logits.float(), seen["h"].float()


def _scored(logits: torch.Tensor, labels: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the positions scored against the token `shift` ahead, and those tokens: [n, vocab], [n]."""
    targets = labels[:, shift:].to(logits.device)
    keep = targets != -100
    return logits[:, :-shift][keep], targets[keep]


def condition_measures(logits: torch.Tensor, residual: torch.Tensor, batch: dict, index: int, label_shift: int,
                       reference: torch.Tensor | None = None) -> dict:
    """What one condition did to the host on `batch`, over the positions that have a next real token:
    mean entropy and top-1 probability of the next-token distribution, the yardstick (next-token
    loss), the objective's loss (`label_shift`), the KL from `reference` (log-probabilities at the
    same positions, [n, vocab]) when given, and `index`'s share of the final residual's squared norm
    over the real tokens but each text's first (the host's massive activation sits there)."""
    scored, targets = _scored(logits, batch["labels"], 1)
    logp = scored.log_softmax(-1)
    p = logp.exp()
    objective_logits, objective_targets = _scored(logits, batch["labels"], label_shift)
    mask = batch["attention_mask"].bool().to(residual.device)
    not_first = mask.clone()
    not_first[torch.arange(len(mask)), mask.int().argmax(1)] = False
    h = residual[not_first]
    measures = {
        "entropy": float(-(p * logp).sum(-1).mean()),
        "top1_probability": float(p.max(-1).values.mean()),
        "yardstick": float(F.cross_entropy(scored, targets)),
        "objective_loss": float(F.cross_entropy(objective_logits, objective_targets)),
        "index_share": float((h[:, index].pow(2) / h.pow(2).sum(-1)).mean()),
    }
    if reference is not None:
        measures["kl_from_irm"] = float((reference.exp() * (reference - logp)).sum(-1).mean())
    return measures


def temperature_fit(host_logits: torch.Tensor, target_logprobs: torch.Tensor, iterations: int = 40, beta_max: float = 16.0,
                    chunk: int = 128) -> dict:
    """One inverse temperature per position that brings the host's own distribution closest to the
    IRM's: beta minimising KL(p_irm || softmax(beta * host_logits)), [n] positions of [n, vocab].

    The KL is convex in beta with derivative E_beta[z] - E_irm[z] (z: the host's logits), so
    bisection on the derivative over [0, beta_max] finds it. Returns the KL at beta = 1 and at the
    fitted betas (means over positions), the share of the KL the temperature explains
    (1 - after / before) and the betas' median."""
    betas, before, after = [], [], []
    for start in range(0, len(host_logits), chunk):
        z = host_logits[start:start + chunk].float()
        target = target_logprobs[start:start + chunk].float()
        p = target.exp()
        target_mean = (p * z).sum(-1)
        low, high = torch.zeros(len(z), device=z.device), torch.full((len(z),), beta_max, device=z.device)
        for _ in range(iterations):
            middle = (low + high) / 2
            rising = ((middle[:, None] * z).softmax(-1) * z).sum(-1) > target_mean
            high, low = torch.where(rising, middle, high), torch.where(rising, low, middle)
        beta = (low + high) / 2

        def kl(scale):
            return (p * (target - (scale[:, None] * z).log_softmax(-1))).sum(-1)

        betas.append(beta)
        before.append(kl(torch.ones_like(beta)))
        after.append(kl(beta))
    before_mean, after_mean = float(torch.cat(before).mean()), float(torch.cat(after).mean())
    return {"kl_before": before_mean, "kl_after": after_mean, "share": 1 - after_mean / before_mean if before_mean > 0 else float("nan"),
            "median_beta": float(torch.cat(betas).median())}


def measure_effect(host: Host, irm: IRM, batch: dict, index: int, moved_to: int, label_shift: int = 1) -> dict:
    """The host on `batch` (a probe's: input_ids, attention_mask, labels with -100 on padding) in
    every condition of CONDITIONS, with the temperature fit between `host` and `irm`.

    Returns {"index", "moved_to", "label_shift", "conditions": {condition: condition_measures},
    "temperature": temperature_fit}."""
    with inject(host, irm):
        logits, residual = _run(host, batch)
    reference = _scored(logits, batch["labels"], 1)[0].log_softmax(-1)  # the IRM's next-token log-probabilities
    conditions = {"irm": condition_measures(logits, residual, batch, index, label_shift, reference)}
    logits, residual = _run(host, batch)
    host_scored = _scored(logits, batch["labels"], 1)[0]
    conditions["host"] = condition_measures(logits, residual, batch, index, label_shift, reference)
    for condition in CONDITIONS[2:]:
        with inject(host, irm, transform=write_transform(condition, index, moved_to)):
            logits, residual = _run(host, batch)
        conditions[condition] = condition_measures(logits, residual, batch, index, label_shift, reference)
    return {"index": int(index), "moved_to": int(moved_to), "label_shift": int(label_shift),
            "conditions": {condition: conditions[condition] for condition in CONDITIONS},
            "temperature": temperature_fit(host_scored, reference)}


def effect_shares(conditions: dict) -> dict[str, dict[str, float]]:
    """How much of the IRM's effect each of only / masked / moved keeps.

    "distribution": the IRM's change is KL(irm || host) (nats), and a condition keeps
    1 - KL(irm || condition) / KL(irm || host) of it (1: the IRM's distribution; 0: no closer than
    the host; below 0: further away than the host). Per metric of EFFECT_METRICS: the IRM's change
    from the host, and each condition's change from the host as a share of it (above 1: it
    overshoots). Masking keeping near 1 means the effect stayed in place without the index."""
    before = conditions["host"]["kl_from_irm"]
    shares = {"distribution": {"irm_change": before, **{condition: 1 - conditions[condition]["kl_from_irm"] / before if before else float("nan")
                                                         for condition in CONDITIONS[2:]}}}
    for metric in EFFECT_METRICS:
        host = conditions["host"][metric]
        change = conditions["irm"][metric] - host
        shares[metric] = {"irm_change": change, **{condition: (conditions[condition][metric] - host) / change if change else float("nan")
                                                   for condition in CONDITIONS[2:]}}
    return shares


def effect_verdict(shares: dict[str, dict[str, float]], temperature_share: float, rules: EffectRules = EffectRules()) -> str:
    """Which hypothesis a run's numbers support (one of VERDICTS), on the share of the IRM's
    next-token distribution each condition keeps (`effect_shares`' "distribution"): none to explain
    where KL(irm || host) is under `rules.min_change`; (b) where keeping only the index keeps at
    least `much`, masking it keeps at most 1 - `much`, and the temperature explains at least `much`
    of the KL; (d) where masking keeps at least 1 - `little` and keeping only the index at most
    `little`; otherwise neither."""
    distribution = shares["distribution"]
    if not distribution["irm_change"] >= rules.min_change:
        return "no effect to explain"
    if distribution["only"] >= rules.much and distribution["masked"] <= 1 - rules.much and temperature_share >= rules.much:
        return "norm knob (b)"
    if distribution["masked"] >= 1 - rules.little and distribution["only"] <= rules.little:
        return "inert (d)"
    return "neither"


def effect_record(effect: dict, rules: EffectRules = EffectRules()) -> dict:
    """`measure_effect`'s result with its shares and verdict: what metrics.json keeps per run."""
    shares = effect_shares(effect["conditions"])
    return {**effect, "shares": shares, "verdict": effect_verdict(shares, effect["temperature"]["share"], rules)}



def dominant_index_effect(host: Host, irm: IRM, batch: dict, index: int, gains, label_shift: int,
                          rules: EffectRules = EffectRules()) -> dict:
    """`effect_record` of one IRM's dominant `index` on a probe batch: its write kept alone,
    masked, and moved to the next index by `gains` (the host's mean layer-norm gain per index,
    irmlib.residual.norm_gains: a Series or array), the objective's loss at `label_shift`. What
    notebooks 02, 06 and 07 record per run as `dominant_index_effect`."""
    moved_to = next_gain_index(np.asarray(gains), index)
    return effect_record(measure_effect(host, irm, batch, index, moved_to, label_shift), rules)

def effect_table(effects: dict[str, dict]) -> pd.DataFrame:
    """One row per run or cell (`effect_record`s by name): the index, KL(irm || host), the share
    of the IRM's next-token distribution that only the index / everything but it / the moved write
    keeps, the temperature's share of the KL, the host's entropy without and with the IRM, the
    index's share of the final residual's squared norm with the IRM and with only the index, and
    the verdict."""
    return pd.DataFrame({name: {
        "index": e["index"], "moved_to": e["moved_to"], "kl_irm_host": e["shares"]["distribution"]["irm_change"],
        "only_keeps": e["shares"]["distribution"]["only"], "masked_keeps": e["shares"]["distribution"]["masked"],
        "moved_keeps": e["shares"]["distribution"]["moved"], "temperature_share": e["temperature"]["share"],
        "entropy_host": e["conditions"]["host"]["entropy"], "entropy_irm": e["conditions"]["irm"]["entropy"],
        "final_index_share_irm": e["conditions"]["irm"]["index_share"], "final_index_share_only": e["conditions"]["only"]["index_share"],
        "verdict": e["verdict"]} for name, e in effects.items()}, index=EFFECT_COLUMNS).T


def carries_effect(effects: pd.DataFrame, much: float = EffectRules.much, what: str = "stable cell") -> tuple[bool | None, str]:
    """Whether the dominant index carries the IRM's effect in every row of `effects`
    (`effect_table`): masking it keeps at most 1 - `much` of the IRM's next-token distribution.
    Rows whose IRM barely moved the host ("no effect to explain") are listed, not counted; None
    where no row is left. Returns (held, evidence), `what` naming the rows in the evidence."""
    measured = effects[effects.verdict != "no effect to explain"]
    carried = measured[measured.masked_keeps.astype(float) <= 1 - much] if len(measured) else measured
    none = f" No effect to explain (KL(irm || host) under the threshold): {', '.join(effects.index.difference(measured.index))}." \
        if len(measured) < len(effects) else ""
    evidence = ("; ".join(f"{name} (index {int(row['index'])}): masked keeps {row.masked_keeps:.3f}, only the index keeps "
                          f"{row.only_keeps:.3f}, moved keeps {row.moved_keeps:.3f} of KL(irm || host) = {row.kl_irm_host:.2f} nats; "
                          f"a temperature explains {row.temperature_share:.2f} of it; {row.verdict}"
                          for name, row in measured.iterrows()) + "." if len(measured) else f"No {what} had an effect to explain.")
    return (len(carried) == len(measured) if len(measured) else None), evidence + none
