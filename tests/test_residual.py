"""The host's own residual stream (irmlib.residual): the IRM's input, hidden states after every
layer, massive activations and the per-index table of the host's gains, on a tiny random host."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_model, tiny_tokenizer
from irmlib.host import FAMILIES, Host
from irmlib.irm import IRM, IRMConfig
from irmlib.residual import host_hidden_states, host_index_table, irm_inputs, massive_activation_ratio, norm_gains


def layer_outputs(host, input_ids):
    """What each decoder layer returns, caught with forward hooks: `[batch, seq, layers, hidden]`."""
    caught = []
    hooks = [layer.register_forward_hook(lambda m, a, out: caught.append(out[0] if isinstance(out, tuple) else out))
             for layer in host.layers]
    with torch.inference_mode():
        normed_last = host.model(input_ids=input_ids, output_hidden_states=True).hidden_states[-1]
    for hook in hooks:
        hook.remove()
    return torch.stack(caught, dim=2), normed_last


def test_host_hidden_states_are_the_raw_residual_stream_of_every_layer(tiny_host):
    input_ids = torch.randint(3, 97, (2, 5))
    raw, normed_last = layer_outputs(tiny_host, input_ids)
    states = host_hidden_states(tiny_host, input_ids=input_ids)
    assert states.shape == (10, tiny_host.n_layers, tiny_host.hidden_size)
    torch.testing.assert_close(states, raw.reshape(10, tiny_host.n_layers, -1))
    # HF's own last hidden state went through the final norm, so it differs from the raw stream.
    assert not torch.allclose(normed_last.reshape(10, -1), states[:, -1])


def test_host_hidden_states_drop_padding(tiny_host):
    long, short = torch.randint(3, 97, (1, 6)), torch.randint(3, 97, (1, 3))
    input_ids = torch.cat([long, torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    states = host_hidden_states(tiny_host, input_ids=input_ids, attention_mask=mask)
    alone = torch.cat([host_hidden_states(tiny_host, input_ids=long), host_hidden_states(tiny_host, input_ids=short)])
    assert states.shape[0] == 9
    torch.testing.assert_close(states, alone, atol=1e-5, rtol=1e-5)


def test_host_hidden_states_from_texts_with_a_tokenizer_lacking_a_pad_token():
    host = Host(model=tiny_model("llama"), tokenizer=tiny_tokenizer(), name="tiny", family=FAMILIES["llama"])
    assert host.tokenizer.pad_token is None
    states = host_hidden_states(host, texts=["w5 w6 w7 w8", "w9"], max_length=3)
    assert states.shape == (3 + 1, host.n_layers, host.hidden_size)  # truncated to 3, padding dropped
    torch.testing.assert_close(states, host_hidden_states(host, input_ids=torch.tensor([[5, 6, 7], [9, 2, 2]]),
                                                          attention_mask=torch.tensor([[1, 1, 1], [1, 0, 0]])))


def test_massive_activation_ratio_finds_a_planted_index():
    states = torch.ones(50, 3, 16)
    states[10, 1, 5] = -400.0  # one token, one layer
    ratio = massive_activation_ratio(states)
    assert ratio.shape == (3, 16)
    assert ratio[1, 5] == pytest.approx(400.0)
    assert np.unravel_index(ratio.argmax(), ratio.shape) == (1, 5)
    np.testing.assert_allclose(np.delete(ratio.ravel(), 1 * 16 + 5), 1.0)


def test_host_index_table_lines_up_host_properties_per_index(tiny_host):
    with torch.no_grad():
        for layer in tiny_host.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
            layer.input_layernorm.weight[9] = -0.01  # a gain is |weight|: 0.01 in half the norms, 1 in the other half
        tiny_host.final_norm.weight.fill_(1.0)
        tiny_host.final_norm.weight[3] = -7.0
        tiny_host.lm_head.weight.zero_()
        tiny_host.lm_head.weight[:4, 11] = 1.0  # column 11 has norm sqrt(4)
    states = torch.ones(8, tiny_host.n_layers, tiny_host.hidden_size)
    states[0, 2, 20] = 30.0
    table = host_index_table(tiny_host, states)
    assert list(table.columns) == ["massive_ratio_max", "layer_norm_gain", "final_norm_gain", "lm_head_column_norm"]
    assert len(table) == tiny_host.hidden_size
    assert table["massive_ratio_max"].idxmax() == 20 and table.loc[20, "massive_ratio_max"] == pytest.approx(30.0)
    assert table["layer_norm_gain"].idxmin() == 9 and table.loc[9, "layer_norm_gain"] == pytest.approx((0.01 + 1.0) / 2)
    assert table.loc[0, "layer_norm_gain"] == pytest.approx(1.0)
    assert table["final_norm_gain"].idxmax() == 3 and table.loc[3, "final_norm_gain"] == 7.0
    assert table.loc[11, "lm_head_column_norm"] == pytest.approx(2.0) and table["lm_head_column_norm"].sum() == 2.0


def test_irm_inputs_are_the_residual_after_layer_0_attention(tiny_host):
    from irmlib.inject import Injection

    irm = IRM(IRMConfig.for_host(tiny_host, init="torch"))
    seen = {}
    original = irm.forward
    irm.forward = lambda h: seen.setdefault("h", h.detach().clone()) is not None and original(h)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    injection = Injection(tiny_host, irm)
    with torch.no_grad():
        tiny_host.model(input_ids=ids, attention_mask=mask)
    injection.remove()
    inputs = irm_inputs(tiny_host, ids, mask)
    assert inputs.shape == (6, tiny_host.hidden_size)
    torch.testing.assert_close(inputs, seen["h"][mask.bool()])


def test_norm_gains_name_the_smallest_gains(tiny_host):
    with torch.no_grad():
        for layer in tiny_host.layers:
            layer.input_layernorm.weight[7] = 1e-4
            layer.post_attention_layernorm.weight[7] = -1e-4  # a gain is its size
        tiny_host.final_norm.weight[3] = 1e-5
    gains = norm_gains(tiny_host)
    assert gains.shape == (tiny_host.hidden_size, 2)
    assert gains.layer_norm_gain.idxmin() == 7 and gains.loc[7, "layer_norm_gain"] == pytest.approx(1e-4)
    assert gains.final_norm_gain.idxmin() == 3
