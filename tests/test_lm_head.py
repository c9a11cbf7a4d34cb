"""LM-head probing: the logit direction of an index, and a nudge that moves exactly one index."""

from __future__ import annotations

import pytest
import torch

from irmlib.probe import index_logit_direction, logit_spread, next_token_kl, nudged


def test_logit_direction_is_the_head_column_times_the_norm_weight(tiny_host):
    tiny_host.final_norm.weight.data[5] = 3.0
    direction = index_logit_direction(tiny_host, 5)
    assert torch.allclose(direction, tiny_host.lm_head.weight[:, 5] * 3.0)
    assert logit_spread(tiny_host)[5] == pytest.approx(float(direction.std()), rel=1e-5)


def test_nudge_moves_one_index_by_size_times_rms(tiny_host):
    captured = {}
    hook = tiny_host.layers[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("h", out.clone()))
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiny_host.model(ids)
        plain = captured["h"]
        hook.remove()
        with nudged(tiny_host, 9, 4.0):
            hook = tiny_host.layers[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("h", out.clone()))
            tiny_host.model(ids)
            hook.remove()
    moved = captured["h"] - plain
    rms = plain.pow(2).mean(-1).sqrt()
    assert torch.allclose(moved[..., 9], 4.0 * rms, atol=1e-5)
    assert moved[..., [i for i in range(32) if i != 9]].abs().max() == 0


@pytest.mark.slow
def test_next_token_kl_is_zero_without_a_nudge_and_grows_with_it():
    from irmlib.host import load_host

    host = load_host("embedded", device="cpu")
    kl = next_token_kl(host, ["What is the capital of France?", "Name a fruit."], 100, (0.0, 2.0, 8.0), "chat")
    means = kl.groupby("size").kl.mean()
    assert means[0.0] == pytest.approx(0.0, abs=1e-6)
    assert 0 < means[2.0] < means[8.0]
