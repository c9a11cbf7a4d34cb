"""Notebook 05's study: what does the host do with the dominant index? The index probed (the
dominant index of the striated runs, or none), the logit lens and logit spread, causal nudges at
the final hidden state, masking at inference, retraining with the index masked, and the
notebook's claims.

The paper blames an over-burdened LM head for the dominant index. A unit of the residual stream
along index i reaches the logits as `lm_head.weight[:, i] * final_norm.weight[i]` (before the
norm's rescaling by the whole vector's RMS), so that column is what the index "says".
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..claims import Claim, fmt, plural, verdict
from ..generate import capture_irm_outputs
from ..health import is_evidence
from ..host import Host
from ..inject import layer_output, replace_layer_output
from ..irm import load_irm
from ..judge import EmotionJudge
from ..profile_runs import train_for_profile
from ..prompts import decode_tokens, encode_prompts, format_prompt, left_padding
from ..runs import read_checkpoint, run_dir, run_name
from ..scoring import change_verdict, generation_table, paired_change, paired_scored, score_generations
from ..striation import is_striated, magnitude_matrix, shared_dominant_index, striation_metrics
from ..train import read_done


def probed_index(matrices: dict[str, np.ndarray], ratio: float) -> dict:
    """The IRM index this notebook probes: among the runs that are striated (index share at least
    `ratio` x layer share), their shared dominant index; where they share none, the dominant index
    of the most clearly striated one. {"index": int or None, "striated": [run names], "source": why}.
    None where no run is striated: there is no dominant index to speak of."""
    metrics = {name: striation_metrics(m) for name, m in matrices.items()}
    striated = [name for name, m in metrics.items() if is_striated(m, ratio)]
    if not striated:
        return {"index": None, "striated": [], "source": f"no run is striated (index share >= {ratio:g}x layer share)"}
    shared = shared_dominant_index({name: matrices[name] for name in striated})
    if shared is not None:
        return {"index": shared, "striated": striated, "source": f"shared by the striated runs ({', '.join(striated)})"}
    clearest = max(striated, key=lambda n: metrics[n]["index_share"] - metrics[n]["layer_share"])
    return {"index": metrics[clearest]["dominant_index"], "striated": striated,
            "source": f"the dominant index of {clearest}, the most clearly striated run (the striated runs share none)"}


def random_controls(hidden: int, exclude: list[int | None], n: int, seed: int = 0) -> list[int]:
    """`n` random hidden indices other than `exclude`, the same for a given seed."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice([i for i in range(hidden) if i not in exclude], n, replace=False)]


def index_logit_direction(host: Host, index: int) -> torch.Tensor:
    """[vocab]: the logit change per unit of the (normalised) residual along `index`."""
    return (host.lm_head.weight[:, index] * host.final_norm.weight[index]).detach().float().cpu()


def logit_lens(host: Host, index: int, top: int = 12) -> pd.DataFrame:
    """The tokens that `index` promotes most and suppresses most, with their logit weights."""
    direction = index_logit_direction(host, index)
    up, down = direction.topk(top), (-direction).topk(top)
    return pd.DataFrame({"promoted": decode_tokens(host.tokenizer, up.indices.tolist()), "promoted_weight": up.values.numpy(),
                         "suppressed": decode_tokens(host.tokenizer, down.indices.tolist()), "suppressed_weight": (-down.values).numpy()})


def logit_spread(host: Host) -> np.ndarray:
    """[hidden]: standard deviation over the vocabulary of each index's logit direction; how
    strongly an index moves the next-token distribution, comparable across indices."""
    weights = host.lm_head.weight.detach().float() * host.final_norm.weight.detach().float()
    return weights.std(dim=0).cpu().numpy()


@contextmanager
def nudged(host: Host, index: int, size: float) -> Iterator[None]:
    """Add `size` x RMS(h) along `index` to the last decoder layer's output (the final hidden
    state before the norm), at every position, inside the block."""

    def hook(module, args, output):
        hidden = layer_output(output)
        rms = hidden.float().pow(2).mean(-1, keepdim=True).sqrt().to(hidden.dtype)
        bump = torch.zeros_like(hidden)
        bump[..., index] = 1.0
        return replace_layer_output(output, hidden + size * rms * bump)

    handle = host.layers[-1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def next_token_kl(host: Host, questions: list[str], index: int, sizes: tuple[float, ...], prompt_format: str) -> pd.DataFrame:
    """KL(base || nudged) of the next-token distribution after each prompt, per nudge size.

    Returns one row per (size, question) with columns size, question, kl (nats).
    """
    tokenizer = host.tokenizer
    prompts = [format_prompt(tokenizer, q, prompt_format) for q in questions]
    with left_padding(tokenizer):  # the next token is read at the last column
        encoded = encode_prompts(tokenizer, prompts, prompt_format, padding=True, return_tensors="pt").to(host.device)
    base = F.log_softmax(host.model(**encoded).logits[:, -1].float(), dim=-1)
    rows = []
    for size in sizes:
        with nudged(host, index, size):
            moved = F.log_softmax(host.model(**encoded).logits[:, -1].float(), dim=-1)
        kl = F.kl_div(moved, base, log_target=True, reduction="none").sum(-1).cpu().numpy()
        rows += [{"size": size, "question": q, "kl": float(k)} for q, k in zip(questions, kl)]
    return pd.DataFrame(rows)


def nudge_generations(host: Host, judge, questions: list[str], indices: dict[str, int], size: float, prompt_format: str,
                      max_new_tokens: int) -> pd.DataFrame:
    """Greedy generations of the base host with the final hidden state nudged along each index
    (and once without a nudge, labelled "none"), scored by the judge and the base host."""
    frames = []
    for label, index in {"none": None, **indices}.items():
        with nudged(host, index, size) if index is not None else nullcontext():
            table = generation_table(host, {"base": None}, questions, prompt_format, max_new_tokens, modes=("greedy",))
        frames.append(table.assign(nudge=label, index=index))
    return score_generations(host, judge, pd.concat(frames, ignore_index=True), prompt_format)


def masking_ablation(host: Host, judge: EmotionJudge, irms: dict[str, tuple[str, object]],
                     conditions: dict[str, dict[str, tuple[int, ...]]], questions: list[str], prompt_format: str,
                     max_new_tokens: int) -> pd.DataFrame:
    """Notebook 05's inference ablation: greedy generations of each emotion's IRM with hidden
    indices of its output zeroed, scored.

    irms: {emotion: (run name, IRM)}; conditions: {emotion: {label: indices to zero}}, e.g.
    {"anger": {"unmasked": (), "dominant masked": (507,)}}. One row per (emotion, condition,
    question), with `p_target` the judge's probability of the emotion.
    """
    frames = []
    for emotion, (name, irm) in irms.items():
        for label, mask in conditions[emotion].items():
            table = generation_table(host, {name: irm}, questions, prompt_format, max_new_tokens, modes=("greedy",),
                                     masked_indices=tuple(mask))
            scored = score_generations(host, judge, table, prompt_format)
            frames.append(scored.assign(emotion=emotion, condition=label, p_target=scored[f"p_{emotion}"]))
    return pd.concat(frames, ignore_index=True)


def retrain_masked(host: Host, judge: EmotionJudge, profile, emotion: str, seed: int, rows: list[dict], masked_index: int,
                   questions: list[str]) -> dict:
    """Notebook 05's training ablation: retrain the IRM of (emotion, seed) with `masked_index` of its
    output zeroed throughout (run variant "mask<index>"; a finished one is loaded), then measure
    what took its place and whether the tone survives.

    Captures and generations run with the mask, as it trained. Returns the masked index, the new
    dominant index, the index and layer shares and whether they make the retrained IRM striated
    (analysis.striated_share_ratio), the masked index's largest output (0: the mask held), the
    best validation loss with and without the mask, and the target probability (mean over scored
    texts), the number of scored texts and the median perplexity of the retrained IRM's greedy
    generations.
    """
    variant = f"mask{masked_index}"
    summary = train_for_profile(host, profile, emotion, seed, rows, masked_indices=(masked_index,), variant=variant, progress=False)
    masked_irm = load_irm(read_checkpoint(profile, emotion, seed, variant), host, device=host.device).eval()
    # Measured as it trained: the masked index zeroed (left at its init, it would be injected).
    mask = (masked_index,)
    matrix = magnitude_matrix(capture_irm_outputs(host, masked_irm, questions, profile.prompt_format,
                                                  new_tokens=profile.analysis.capture_new_tokens, masked_indices=mask).irm_outputs)
    table = generation_table(host, {run_name(emotion, seed, variant): masked_irm}, questions, profile.prompt_format,
                             profile.max_new_tokens, modes=("greedy",), masked_indices=mask)
    scored = score_generations(host, judge, table, profile.prompt_format)
    metrics = striation_metrics(matrix)
    return {"masked_index": masked_index, "new_dominant_index": metrics["dominant_index"], "index_share": metrics["index_share"],
            "layer_share": metrics["layer_share"], "striated": is_striated(metrics, profile.analysis.striated_share_ratio),
            "masked_index_output": float(matrix[:, masked_index].max()), "best_val_loss_masked": summary["best_val_loss"],
            "best_val_loss_unmasked": float(read_done(run_dir(profile, emotion, seed))["best_val_loss"]),
            "p_target_masked_training": float(scored[f"p_{emotion}"].mean()),
            "scored_masked_training": int(scored[f"p_{emotion}"].notna().sum()),
            "median_perplexity_masked_training": float(scored.perplexity.median())}


def claims(probed: dict, kl_table: pd.DataFrame, ablation: pd.DataFrame, masked_table: pd.DataFrame, spread_rank: int | None,
           hidden: int, min_scored: int, run_flags: dict[str, str] | None = None) -> list[Claim]:
    """Notebook 05's claims: (1) nudging the probed index moves the next token more than every
    random index does, at the largest nudge (not tested without a probed index); (2) per emotion,
    masking the run's dominant index at inference lowers the target probability (the paired
    change against the unmasked IRM on the same prompts); (3) per retrained emotion, the IRM
    trained with its dominant index masked is striated again, at another index (its `striated`,
    by analysis.striated_share_ratio: the mask itself guarantees the index is another).

    kl_table: mean KL by probe label (rows) and nudge size (columns); ablation: rows of
    `masking_ablation`; masked_table: one row per emotion of `retrain_masked`; run_flags: {emotion:
    the flag of the run ablated (irmlib.health.flag_label)}: a flagged run's claim 2 is not tested."""
    run_flags = run_flags or {}
    found = []
    if probed["index"] is None:
        found.append(Claim("1", "Nudging the dominant index moves the next token more than a random index", verdict(None),
                           f"No index to probe: {probed['source']}."))
    else:
        size = kl_table.columns.max()
        dominant = float(kl_table.loc["IRM dominant", size])
        randoms = kl_table.loc[[p for p in kl_table.index if p.startswith("random")], size]
        found.append(Claim("1", "Nudging the dominant index moves the next token more than a random index",
                           verdict(bool(dominant > randoms.max())),
                           f"Index {probed['index']} ({probed['source']}); logit spread rank {spread_rank} of {hidden}; at a nudge of "
                           f"{size:g}x RMS, next-token KL {dominant:.4f} against {randoms.min():.4f} to {randoms.max():.4f} for "
                           f"{plural(len(randoms), 'random index', 'random indices')}."))
    for emotion, part in ablation.groupby("emotion", sort=False):
        unmasked = part[part.condition == "unmasked"]
        rows = {}
        for condition in ("dominant masked", "random masked"):
            masked = part[part.condition == condition]
            mean, low, high = paired_change(masked, unmasked, "p_target")
            rows[condition] = (mean, change_verdict(low, high, paired_scored(masked, unmasked, "p_target"), min_scored))
        flag = run_flags.get(emotion, "ok")
        held = (None if rows["dominant masked"][1].startswith("not tested") or not is_evidence(flag)
                else rows["dominant masked"][1] == "lowered")
        found.append(Claim(f"2, {emotion}", f"Masking the {emotion} IRM's dominant index at inference lowers p({emotion})", verdict(held),
                           ("" if is_evidence(flag) else f"The run is flagged {flag}: not evidence. ")
                           + f"Change against the unmasked IRM: dominant masked {fmt(rows['dominant masked'][0], signed=True)} "
                           f"({rows['dominant masked'][1]}), a random index masked {fmt(rows['random masked'][0], signed=True)} "
                           f"({rows['random masked'][1]})."))
    for emotion, row in masked_table.iterrows():
        found.append(Claim(f"3, {emotion}", f"Retrained with its dominant index masked, the {emotion} IRM is striated at another index",
                           verdict(bool(row.striated)),
                           f"Index {int(row.masked_index)} masked (largest output there {float(row.masked_index_output):.3g}); new "
                           f"dominant index {int(row.new_dominant_index)}, index share {float(row.index_share):.2f} vs layer share "
                           f"{float(row.layer_share):.2f} ({'' if row.striated else 'not '}striated); best validation loss "
                           f"{row.best_val_loss_masked:.4f} (unmasked {row.best_val_loss_unmasked:.4f}); p({emotion}) "
                           f"{fmt(row.p_target_masked_training)} over "
                           f"{int(row.scored_masked_training)} scored texts."))
    return found
