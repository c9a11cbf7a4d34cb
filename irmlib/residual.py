"""The host's own residual stream: the IRM's input, the hidden states after every layer, massive
activations, and the per-index gains of its norms (what the host does with each hidden index).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .host import Host
from .inject import layer_input, layer_output
from .striation import rank_of

class _Stop(Exception):
    pass


@torch.inference_mode()
def irm_inputs(host: Host, input_ids: torch.Tensor, attention_mask: torch.Tensor, input_layer: int = 0) -> torch.Tensor:
    """The IRM's input, the residual right after layer `input_layer`'s attention add, at every
    real token: [batch, tokens] -> [real tokens, hidden]. The host stops right after that layer's
    attention, so this costs a fraction of a forward."""
    seen: dict[str, torch.Tensor] = {}

    def remember(module, args, kwargs):
        seen["h"] = layer_input(args, kwargs)

    def stop(module, args, output):
        seen["a"] = layer_output(output)
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


def _encode(host: Host, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = host.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length, padding_side="right")
    return batch["input_ids"], batch["attention_mask"]


def host_hidden_states(host: Host, texts: Sequence[str] | None = None, input_ids: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, max_length: int = 64) -> torch.Tensor:
    """Residual stream after each decoder layer at every real token: `[tokens, layers, hidden]` (fp32, CPU).

    Give either `texts` (tokenised with `host.tokenizer`, right padding) or `input_ids` `[batch, seq]`
    with an optional `attention_mask` `[batch, seq]`.
    """
    if texts is not None:
        input_ids, attention_mask = _encode(host, texts, max_length)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # HF's last hidden state has already been through the final norm; take the raw one from the layer.
    last = {}
    hook = host.layers[-1].register_forward_hook(
        lambda module, args, output: last.update(h=layer_output(output)))
    try:
        with torch.inference_mode():
            out = host.model(input_ids=input_ids.to(host.device), attention_mask=attention_mask.to(host.device),
                             output_hidden_states=True)
    finally:
        hook.remove()
    states = torch.stack([*out.hidden_states[1:-1], last["h"]], dim=2)  # [batch, seq, layers, hidden]
    return states[attention_mask.to(host.device).bool()].float().cpu()


def massive_activation_ratio(hidden_states: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per layer, max over tokens of |h| at each index over the median |h| of that layer: `[tokens, layers, hidden]` -> `[layers, hidden]`."""
    h = np.abs(np.asarray(hidden_states, dtype=np.float64))
    median = np.median(h.transpose(1, 0, 2).reshape(h.shape[1], -1), axis=1)
    return h.max(0) / median[:, None]


def host_index_table(host: Host, hidden_states: torch.Tensor | np.ndarray) -> pd.DataFrame:
    """Per hidden index: the largest massive-activation ratio over layers, the norms' gains
    (`norm_gains`) and the L2 norm of the LM head's column: [hidden] rows."""
    return pd.DataFrame({"massive_ratio_max": massive_activation_ratio(hidden_states).max(0)}).join(norm_gains(host)).assign(
        lm_head_column_norm=host.lm_head.weight.detach().double().norm(dim=0).cpu().numpy()).rename_axis("index")


# One ranking convention for every table: each quantity is ranked from the end a hypothesis
# points at (massive activations: the largest; norm gains: the smallest, which hide an index from
# what the host computes), and the column says which: rank_largest_..., rank_smallest_...; 1 is
# that end. Ties share the better rank.
RANK_ORDER = {"massive_ratio_max": "largest", "layer_norm_gain": "smallest", "final_norm_gain": "smallest",
              "lm_head_column_norm": "largest"}


def rank_column(quantity: str) -> str:
    """The name of a rank column: "rank_smallest_final_norm_gain" (1 = the smallest gain)."""
    return f"rank_{RANK_ORDER[quantity]}_{quantity}"


def host_ranks(table: pd.DataFrame, index: int) -> dict[str, int]:
    """Where one index stands in the host's per-index table (`host_index_table`), by RANK_ORDER."""
    # rank_of ranks the largest first: negating a quantity ranks its smallest first.
    return {rank_column(quantity): rank_of(table[quantity].to_numpy() * (1 if end == "largest" else -1), index)
            for quantity, end in RANK_ORDER.items()}


def layer_norms(host: Host) -> list[tuple[int, str, torch.Tensor]]:
    """Every decoder layer's per-index norm gains (input and post-attention for Llama), in layer
    order: [(layer, module name, |gain| [hidden] float64 on CPU)]."""
    hidden = host.hidden_size
    return [(number, name, module.weight.detach().abs().double().cpu())
            for number, layer in enumerate(host.layers) for name, module in layer.named_modules()
            if "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None
            and module.weight.shape == (hidden,)]


def norm_gains(host: Host) -> pd.DataFrame:
    """Per hidden index: mean |gain| over every decoder layer's norms (`layer_norms`) and |gain|
    of the final norm."""
    return pd.DataFrame({
        "layer_norm_gain": torch.stack([gain for _, _, gain in layer_norms(host)]).mean(0).numpy(),
        "final_norm_gain": host.final_norm.weight.detach().abs().double().cpu().numpy(),
    }).rename_axis("index")
