"""What the LM head does with one hidden index: logit lens, causal nudges at the final hidden state.

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

from .prompts import encode_prompts, format_prompt, left_padding
from .host import Host


def index_logit_direction(host: Host, index: int) -> torch.Tensor:
    """[vocab]: the logit change per unit of the (normalised) residual along `index`."""
    return (host.lm_head.weight[:, index] * host.final_norm.weight[index]).detach().float().cpu()


def logit_lens(host: Host, index: int, top: int = 12) -> pd.DataFrame:
    """The tokens that `index` promotes most and suppresses most, with their logit weights."""
    direction = index_logit_direction(host, index)
    up, down = direction.topk(top), (-direction).topk(top)
    decode = host.tokenizer.convert_ids_to_tokens
    return pd.DataFrame({"promoted": decode(up.indices.tolist()), "promoted_weight": up.values.numpy(),
                         "suppressed": decode(down.indices.tolist()), "suppressed_weight": (-down.values).numpy()})


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
        hidden = output[0] if isinstance(output, tuple) else output
        rms = hidden.float().pow(2).mean(-1, keepdim=True).sqrt().to(hidden.dtype)
        bump = torch.zeros_like(hidden)
        bump[..., index] = 1.0
        hidden = hidden + size * rms * bump
        return (hidden,) + output[1:] if isinstance(output, tuple) else hidden

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
    from .evaluate import generation_table, score_generations

    frames = []
    for label, index in {"none": None, **indices}.items():
        with nudged(host, index, size) if index is not None else nullcontext():
            table = generation_table(host, {"base": None}, questions, prompt_format, max_new_tokens, modes=("greedy",))
        frames.append(table.assign(nudge=label, index=index))
    return score_generations(host, judge, pd.concat(frames, ignore_index=True), prompt_format)
