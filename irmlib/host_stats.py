"""The host's hidden indices before anything is trained:
`./reproduce.sh host-stats [--profile P] [--host SPEC] [--index I ...] [--top K] [--json PATH]`.

Every index is ranked from the end each hypothesis about a dominant index points at
(`irmlib.residual.RANK_ORDER`, 1 = that end): the smallest final-norm gain, the smallest gain of
each decoder layer's norms and their mean, the largest massive-activation ratio (max over layers of
an index's largest |h| over the layer's median |h|, read on shipped texts) and the largest LM-head
column norm. Then it says where chosen indices stand, by default the paper's 1512 (Llama-2-7b-chat)
where the host is that wide. On a GPU box with the paper's host this tests the paper's index in
seconds, before any training.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .atomic import write_json
from .data import load_alignment
from .host import Host, HostLoadError, load_host
from .profile import ProfileError, available_profiles, load_profile, profile_from_env
from .residual import RANK_ORDER, host_hidden_states, host_index_table, host_ranks, layer_norms, massive_activation_ratio, rank_column

PAPER_INDEX = 1512  # the paper's dominant index in Llama-2-7b-chat (hidden size 4096)
STATS_TEXTS = 16  # shipped validation texts the massive-activation ratio is read on
STATS_MAX_LENGTH = 64


@dataclass
class HostStats:
    """What the host does with each hidden index, from its weights and one forward pass."""

    host: str
    n_layers: int
    hidden: int
    tokens: int  # real tokens the massive-activation ratio was read on
    table: pd.DataFrame  # host_index_table: [hidden] rows
    layer_gains: pd.DataFrame  # |gain| of every decoder layer's norms: [norms] rows (layer, norm) x [hidden] columns
    massive_layer: np.ndarray  # [hidden]: the layer where each index's massive-activation ratio peaks


def stats_texts(n: int = STATS_TEXTS) -> list[str]:
    """The first `n` validation questions of the shipped curated set with their plain answers,
    one per question: texts the host reads as it was trained to, whatever a profile's data."""
    seen: dict[str, str] = {}
    for row in load_alignment():
        if row["split"] == "validation" and row["question"] not in seen:
            seen[row["question"]] = f"{row['question']} {row['answer']}"
    return list(seen.values())[:n]


def host_stats(host: Host, texts: list[str], max_length: int = STATS_MAX_LENGTH) -> HostStats:
    """Rankable per-index quantities of `host`, the massive-activation ratio read on `texts`."""
    states = host_hidden_states(host, texts, max_length=max_length)  # [tokens, layers, hidden]
    norms = layer_norms(host)
    layer_gains = pd.DataFrame(torch.stack([gain for _, _, gain in norms]).numpy(),
                               index=pd.MultiIndex.from_tuples([(layer, norm) for layer, norm, _ in norms], names=["layer", "norm"]))
    return HostStats(host=host.name, n_layers=host.n_layers, hidden=host.hidden_size,
                     tokens=int(states.shape[0]), table=host_index_table(host, states), layer_gains=layer_gains,
                     massive_layer=massive_activation_ratio(states).argmax(0))


def top_indices(stats: HostStats, quantity: str, k: int) -> list[tuple[int, float]]:
    """The `k` indices at the end of `quantity` that RANK_ORDER names: [(index, value)], rank 1 first."""
    values = stats.table[quantity]
    ordered = values.nsmallest(k) if RANK_ORDER[quantity] == "smallest" else values.nlargest(k)
    return [(int(index), float(value)) for index, value in ordered.items()]


def layer_gain_ranks(stats: HostStats, index: int) -> pd.Series:
    """Rank of `index` by smallest |gain| in each decoder layer's norms (1 = smallest; ties share
    the better rank): [norms] values indexed by (layer, norm)."""
    gains = stats.layer_gains.to_numpy()
    return pd.Series((gains < gains[:, [index]]).sum(1) + 1, index=stats.layer_gains.index, name=index)


def index_report(stats: HostStats, index: int) -> dict:
    """Where one index stands: its value and rank by every RANK_ORDER quantity, the layer where its
    massive-activation ratio peaks, and its rank in each layer's norms."""
    if not 0 <= index < stats.hidden:
        raise ValueError(f"index {index} is outside this host's hidden size {stats.hidden}: give one in 0..{stats.hidden - 1}.")
    per_layer = layer_gain_ranks(stats, index)
    return {
        **{quantity: float(stats.table.at[index, quantity]) for quantity in RANK_ORDER},
        **host_ranks(stats.table, index),
        "massive_ratio_layer": int(stats.massive_layer[index]),
        "layer_norm_ranks": {norm: [int(per_layer[(layer, norm)]) for layer in per_layer.xs(norm, level="norm").index]
                             for norm in per_layer.index.get_level_values("norm").unique()},
    }


def default_indices(stats: HostStats) -> list[int]:
    """The paper's index where the host is wide enough to have it."""
    return [PAPER_INDEX] if PAPER_INDEX < stats.hidden else []


def summary(stats: HostStats, indices: list[int], k: int = 10) -> dict:
    """Everything the command prints, as JSON-ready data."""
    return {"host": stats.host, "layers": stats.n_layers, "hidden": stats.hidden, "tokens": stats.tokens,
            "rank_convention": {rank_column(quantity): f"1 = the {end}" for quantity, end in RANK_ORDER.items()},
            "top": {rank_column(quantity): top_indices(stats, quantity, k) for quantity in RANK_ORDER},
            "indices": {str(index): index_report(stats, index) for index in indices}}


def format_summary(data: dict) -> str:
    """The summary as the command prints it."""
    lines = [f"Host {data['host']}: {data['layers']} layers, hidden size {data['hidden']}; "
             f"massive-activation ratio read on {data['tokens']} real tokens.", ""]
    for column, top in data["top"].items():
        lines.append(f"{column} ({data['rank_convention'][column]}): " + ", ".join(f"{i} ({v:.4g})" for i, v in top))
    for index, report in data["indices"].items():
        lines += ["", f"Index {index}:"]
        lines += [f"  {column}: {report[column]} of {data['hidden']} ({quantity} {report[quantity]:.4g})"
                  for quantity, column in ((q, rank_column(q)) for q in RANK_ORDER)]
        lines.append(f"  massive-activation ratio peaks at layer {report['massive_ratio_layer']}")
        for norm, ranks in report["layer_norm_ranks"].items():
            lines.append(f"  rank by smallest {norm} gain, layer 0..{len(ranks) - 1}: {ranks}")
    if not data["indices"]:
        lines += ["", f"No index asked for (--index I), and the host is narrower than the paper's index {PAPER_INDEX}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="./reproduce.sh host-stats", description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--profile", default=profile_from_env(), help=f"whose host: one of {', '.join(available_profiles())}")
    parser.add_argument("--host", help="a host to read instead of the profile's: 'embedded', a hub id or a local path")
    parser.add_argument("--index", type=int, action="append", help=f"an index to place (repeatable; default {PAPER_INDEX} where the host has it)")
    parser.add_argument("--top", type=int, default=10, help="indices listed per ranking (default 10)")
    parser.add_argument("--texts", type=int, default=STATS_TEXTS, help=f"shipped texts for the massive-activation ratio (default {STATS_TEXTS})")
    parser.add_argument("--json", help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    if args.top < 1 or args.texts < 1:
        parser.error("--top and --texts must be at least 1")
    try:
        spec = args.host or load_profile(args.profile).host
        host = load_host(spec)
    except (ProfileError, HostLoadError) as err:
        parser.error(str(err))
    stats = host_stats(host, stats_texts(args.texts))
    try:
        data = summary(stats, args.index if args.index else default_indices(stats), args.top)
    except ValueError as err:
        parser.error(str(err))
    print(format_summary(data))
    if args.json:
        write_json(args.json, data)


if __name__ == "__main__":
    main()
