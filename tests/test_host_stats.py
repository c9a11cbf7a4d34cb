"""`./reproduce.sh host-stats`: the host's indices ranked before training, on a tiny model with
planted gains, on a Llama-2-shaped tiny model through the command line, and on the embedded host."""

from __future__ import annotations

import json

import pytest
import torch

from irmlib.host_stats import PAPER_INDEX, default_indices, host_stats, index_report, main, stats_texts, summary, top_indices
from irmlib.residual import rank_column


def plant(host) -> None:
    """Index 9: the smallest gain in every layer's input norm but layer 1's; index 3: the smallest final-norm gain."""
    with torch.no_grad():
        for number, layer in enumerate(host.layers):
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
            layer.input_layernorm.weight[9] = 0.5 if number == 1 else -0.01
            layer.input_layernorm.weight[4] = 0.1 if number == 1 else 2.0
        host.final_norm.weight.fill_(1.0)
        host.final_norm.weight[3] = 1e-3


def test_ranks_follow_the_planted_gains(tiny_text_host):
    plant(tiny_text_host)
    stats = host_stats(tiny_text_host, ["w5 w6 w7 w8", "w9 w10 w11"])
    assert stats.tokens == 7 and stats.n_layers == 4 and stats.hidden == 32
    assert stats.layer_gains.shape == (8, 32)  # two norms in each of 4 layers
    assert top_indices(stats, "final_norm_gain", 1) == [(3, pytest.approx(1e-3))]
    assert top_indices(stats, "layer_norm_gain", 1)[0][0] == 9
    report = index_report(stats, 9)
    assert report[rank_column("layer_norm_gain")] == 1
    # In layer 1, index 4 (0.1) is below 9 (0.5); every post-attention norm is flat, so 9 ties for first.
    assert report["layer_norm_ranks"]["input_layernorm"] == [1, 2, 1, 1]
    assert report["layer_norm_ranks"]["post_attention_layernorm"] == [1, 1, 1, 1]
    assert index_report(stats, 4)["layer_norm_ranks"]["input_layernorm"] == [32, 1, 32, 32]
    assert 0 <= report["massive_ratio_layer"] < 4


def test_an_index_outside_the_host_is_refused_by_name(tiny_text_host):
    stats = host_stats(tiny_text_host, ["w5 w6"])
    with pytest.raises(ValueError, match="outside this host's hidden size 32"):
        index_report(stats, 32)
    assert default_indices(stats) == []  # the paper's 1512 is not in a 32-wide host


def test_command_on_a_llama2_shaped_host(tmp_path, capsys):
    from test_paper_dry_run import HIDDEN, tiny_llama2

    host_dir = tiny_llama2(tmp_path / "tiny-llama-2-chat")
    out = tmp_path / "stats.json"
    main(["--host", str(host_dir), "--index", "7", "--top", "3", "--texts", "4", "--json", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["hidden"] == HIDDEN and data["layers"] == 2 and list(data["indices"]) == ["7"]
    assert all(len(top) == 3 for top in data["top"].values())
    assert len(data["indices"]["7"]["layer_norm_ranks"]["input_layernorm"]) == 2
    assert "Index 7:" in printed and f"{data['tokens']} real tokens" in printed
    with pytest.raises(SystemExit):
        main(["--host", str(host_dir), "--index", str(HIDDEN)])
    assert f"outside this host's hidden size {HIDDEN}" in capsys.readouterr().err


def test_embedded_host_places_its_massive_index(embedded_host):
    stats = host_stats(embedded_host, stats_texts(4))
    data = summary(stats, [5])
    assert data["hidden"] == 576 and data["layers"] == 30 and PAPER_INDEX >= data["hidden"]
    # The host's massive-activation index is its own rank 1 by that ranking, whichever it is.
    top = data["top"][rank_column("massive_ratio_max")][0][0]
    assert index_report(stats, top)[rank_column("massive_ratio_max")] == 1
    assert data["top"][rank_column("massive_ratio_max")][0][1] > 100  # a massive activation: far above the median


def test_stats_texts_are_shipped_validation_texts_one_per_question():
    texts = stats_texts(8)
    assert len(texts) == len(set(texts)) == 8
