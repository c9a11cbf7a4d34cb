"""What makes one index dominate (notebook 06): striation metrics tracked during training, the
indices that each hypothesis predicts before any training, and what the host does with an index.

Hypotheses (README, "What makes it dominate"): (a) the optimizer: a gradient of the same sign at most
positions, which Adam's per-coordinate normalisation turns into one large coordinate; (b) the
norms: an index whose RMSNorm gains are near zero, so writing there mostly changes the norm's
denominator; (c) the LM head: the index along which the unembedding follows token frequency.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .analysis import magnitude_matrix, rank_of, striation_metrics
from .host import Host
from .inject import Injection
from .irm import IRM
from .objective import lm_loss


class _Stop(Exception):
    pass


@torch.inference_mode()
def irm_inputs(host: Host, input_ids: torch.Tensor, attention_mask: torch.Tensor, input_layer: int = 0) -> torch.Tensor:
    """The IRM's input, the residual right after layer `input_layer`'s attention add, at every
    real token: [batch, tokens] -> [real tokens, hidden]. The host stops right after that layer's
    attention, so this costs a fraction of a forward."""
    seen: dict[str, torch.Tensor] = {}

    def remember(module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    def stop(module, args, output):
        seen["a"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handles = [host.layers[input_layer].register_forward_pre_hook(remember, with_kwargs=True),
               host.attention(input_layer).register_forward_hook(stop)]
    try:
        host.model(input_ids=input_ids.to(host.device), attention_mask=attention_mask.to(host.device), use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    residual = seen["h"] + seen["a"]
    return residual[attention_mask.to(residual.device).bool()].float().cpu()


class StriationTracker:
    """Striation metrics of an IRM on fixed probe inputs ([tokens, hidden], from `irm_inputs`):
    called with the IRM during training, returns index_share, layer_share, dominant_index,
    vertical_continuity and the mean |output|."""

    def __init__(self, inputs: torch.Tensor, k: int = 5):
        self.inputs, self.k = inputs, k

    @torch.inference_mode()
    def __call__(self, irm: IRM) -> dict:
        param = next(irm.parameters())
        outputs = irm(self.inputs.to(param.device, param.dtype)).float().cpu()
        metrics = striation_metrics(magnitude_matrix(outputs), self.k)
        top = metrics.pop(f"top{self.k}")
        return {**metrics, f"top{self.k}": " ".join(map(str, top)), "mean_abs": float(outputs.abs().mean())}


def probe_tracker(host: Host, profile, rows: list[dict], n_texts: int = 16) -> StriationTracker:
    """The tracker notebooks 02 and 06 both train with, so their curves are comparable: the first
    `n_texts` validation texts of the first emotion of notebook 06 (else of the profile),
    tokenised as the profile trains."""
    from .train import profile_datasets

    emotion = (profile.mechanism or {}).get("emotions", profile.emotions)[0]
    tokenised, collate = profile_datasets(host, profile, emotion, rows)
    validation = tokenised["validation"]
    probe = collate([validation[i] for i in range(min(n_texts, len(validation)))])
    return StriationTracker(irm_inputs(host, probe["input_ids"], probe["attention_mask"]))


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
            vectors = injection._vectors
            (grad,) = torch.autograd.grad(loss, vectors)
            grad = grad.double().flatten(0, 2)  # [positions x layers, hidden]
            signed = signed + grad.sum(0)
            absolute = absolute + grad.abs().sum(0)
    finally:
        injection.remove()
    return (signed.abs() / absolute.clamp_min(1e-30)).cpu().numpy()


def norm_gains(host: Host) -> pd.DataFrame:
    """Per hidden index: mean |gain| over every decoder layer's norms (input and post-attention
    for Llama) and |gain| of the final norm."""
    hidden = host.hidden_size
    layer_gains = [m.weight.detach().abs().double().cpu() for layer in host.layers for m in layer.modules()
                   if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None and m.weight.shape == (hidden,)]
    return pd.DataFrame({
        "layer_norm_gain": torch.stack(layer_gains).mean(0).numpy(),
        "final_norm_gain": host.final_norm.weight.detach().abs().double().cpu().numpy(),
    }).rename_axis("index")


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


def index_profile(host: Host, index: int, gains: pd.DataFrame, massive_ratio: np.ndarray, freq_alignment: np.ndarray,
                  top: int = 10) -> dict:
    """What the host does with one hidden index: its rank by smallest norm gain (1 = smallest), its
    massive-activation ratio and rank, its frequency alignment, and the tokens the LM head
    promotes and suppresses along +index (is EOS among them?)."""
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
        "rank_massive_ratio": rank_of(massive_ratio, index),
        "frequency_alignment": float(freq_alignment[index]),
        "promoted": [tokenizer.decode([t]) for t in promoted],
        "suppressed": [tokenizer.decode([t]) for t in suppressed],
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


def arm_profiles(profile) -> dict:
    """Notebook 06's arms as profiles: the profile, then `mechanism.base`, then each arm's overrides.

    mechanism: {base: {...}, arms: {name: {...}}, replicated: [arm names run for every emotion and
    seed in `emotions` x `seeds`], emotions: [...], seeds: [...]}; the other arms run once, on the
    first emotion and seed.
    """
    from .profile import with_overrides

    spec = profile.mechanism or {}
    if not spec.get("arms"):
        raise ValueError(f"Profile '{profile.name}' has no mechanism.arms: notebook 06 needs them (see irmlib/profiles/cpu.yaml).")
    base = with_overrides(profile, spec.get("base", {}))
    return {name: with_overrides(base, overrides) for name, overrides in spec["arms"].items()}


def arm_runs(profile) -> list[tuple[str, str, int]]:
    """(arm, emotion, seed) of every run of notebook 06, replicated arms first."""
    spec = profile.mechanism or {}
    emotions, seeds = spec.get("emotions", profile.emotions), spec.get("seeds", profile.seeds)
    replicated = spec.get("replicated", [])
    runs = [(arm, e, s) for arm in replicated for e in emotions for s in seeds]
    return runs + [(arm, emotions[0], seeds[0]) for arm in spec.get("arms", {}) if arm not in replicated]


def arm_variant(profile, arm_profile, arm: str) -> str:
    """The run name suffix of an arm: none when it trains exactly as the profile's own runs
    (notebook 02's), so the two notebooks share those runs."""
    from .train import train_config

    same = (train_config(arm_profile, 0) == train_config(profile, 0)
            and (arm_profile.prompt_format, arm_profile.loss_on, arm_profile.data_limit)
            == (profile.prompt_format, profile.loss_on, profile.data_limit))
    return "" if same else f"arm{arm}"


def run_arm(host: Host, profile, arms: dict, arm: str, emotion: str, seed: int, rows: list[dict],
            tracker: StriationTracker, questions: list[str], new_tokens: int = 10) -> dict:
    """Train (or load) one run of an arm, then capture its outputs on `questions` (prompt tokens and
    the first `new_tokens` greedy tokens, as notebook 04) and measure its striations.

    Returns the run's name, arm, training summary, striation metrics, `matrix` (mean |output|,
    [layers, hidden]), `signed` (signed mean, [layers, hidden]), `tracking` (DataFrame of the
    tracked metrics by step) and `irm_dir`, the trained IRM's directory (irmlib.irm.load_irm): the
    IRM itself is not kept, so a study of many runs holds one IRM at a time.
    """
    from .analysis import signed_matrix
    from .generate import capture_irm_outputs
    from .irm import load_irm
    from . import runs
    from .train import train_for_profile

    arm_profile = arms[arm]
    variant = arm_variant(profile, arm_profile, arm)
    summary = train_for_profile(host, arm_profile, emotion, seed, rows, progress=False, variant=variant, tracker=tracker)
    directory = runs.run_dir(profile, emotion, seed, variant)
    irm = load_irm(directory / "best", host, device=host.device).eval()
    outputs = capture_irm_outputs(host, irm, questions, arm_profile.prompt_format, new_tokens=new_tokens).irm_outputs
    matrix = magnitude_matrix(outputs)
    metrics = striation_metrics(matrix)
    tracking = pd.read_csv(directory / "tracking.csv") if (directory / "tracking.csv").exists() else pd.DataFrame()
    return {"run": f"{arm}:{directory.name}", "arm": arm, "emotion": emotion, "seed": seed,
            **{k: summary[k] for k in ("steps", "initial_val_loss", "best_val_loss")}, **metrics,
            "matrix": matrix, "signed": signed_matrix(outputs), "tracking": tracking, "irm_dir": directory / "best"}


def arm_summary(results: list[dict], k: int = 5) -> dict:
    """One arm's runs (from `run_arm`) in numbers: mean shares and vertical continuity, the shared
    dominant index, the per-run ones, and top-1 / top-k agreement (NaN with one run)."""
    from .analysis import index_importance, shared_dominant_index, top_k_agreement

    importances = {r["run"]: index_importance(r["matrix"]) for r in results}
    several = len(results) > 1
    return {
        "runs": len(results),
        "index_share": float(np.mean([r["index_share"] for r in results])),
        "layer_share": float(np.mean([r["layer_share"] for r in results])),
        "vertical_continuity": float(np.mean([r["vertical_continuity"] for r in results])),
        "shared_dominant_index": shared_dominant_index({r["run"]: r["matrix"] for r in results}),
        "dominant_indices": [int(r["dominant_index"]) for r in results],
        "top1_agreement": top_k_agreement(importances, 1) if several else float("nan"),
        f"top{k}_agreement": top_k_agreement(importances, k) if several else float("nan"),
        "best_val_loss": float(np.mean([r["best_val_loss"] for r in results])),
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


def arm_tone(host: Host, judge, irms: dict[str, object], arms: dict, emotion: str, questions: list[str], max_new_tokens: int) -> pd.DataFrame:
    """The tone of each arm's IRM (irmlib.evaluate.tone_table), each arm prompted as it was trained:
    arms that share a prompt format share one base-host row, "base (<format>)", and each arm's
    paired change is against the base host prompted the same way.

    irms: {arm: IRM}; arms: {arm: profile} (arm_profiles). One row per base and per "arm <name>".
    """
    from .evaluate import tone_table

    tables = []
    for prompt_format in dict.fromkeys(arms[arm].prompt_format for arm in irms):
        group = {f"arm {arm}": irm for arm, irm in irms.items() if arms[arm].prompt_format == prompt_format}
        table = tone_table(host, judge, group, emotion, questions, prompt_format, max_new_tokens)
        tables.append(table.rename(index={"base": f"base ({prompt_format})"}).assign(prompt_format=prompt_format))
    return pd.concat(tables)
