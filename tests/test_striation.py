"""Striation analysis: known-answer matrices, and hidden states of a tiny random host."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irmlib.analysis import (
    dominant_index, host_hidden_states, host_index_table, importance_correlations, index_importance,
    magnitude_matrix, massive_activation_ratio, mean_difference_steering, rank_of, shuffled_control,
    top_k_agreement, top_k_indices, variance_shares, vertical_continuity,
)


def striated(layers: int = 6, hidden: int = 20, index: int = 7, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).uniform(0, 1, (layers, hidden))
    matrix[:, index] += 10
    return matrix


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(96)} | {"[UNK]": 96}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w2", unk_token="[UNK]")


def test_magnitude_matrix_pools_tokens_across_sequences_and_takes_abs():
    a = -torch.ones(1, 2, 3)
    b = torch.full((3, 2, 3), 5.0)
    pooled = magnitude_matrix([a, b])
    assert pooled.shape == (2, 3) and pooled.dtype == np.float64
    np.testing.assert_allclose(pooled, (1 + 3 * 5) / 4)  # token-weighted, not the mean of sequence means (3)
    np.testing.assert_allclose(magnitude_matrix(a), 1.0)


def test_variance_shares_separate_columns_from_rows():
    column = np.ones((8, 30))
    column[:, 4] = 50
    row = np.ones((8, 30))
    row[2] = 50
    assert variance_shares(column)["index_share"] == pytest.approx(1.0)
    assert variance_shares(column)["layer_share"] == pytest.approx(0.0)
    assert variance_shares(row)["layer_share"] == pytest.approx(1.0)
    assert variance_shares(row)["index_share"] == pytest.approx(0.0)
    assert variance_shares(np.full((3, 4), 2.0)) == {"index_share": 0.0, "layer_share": 0.0}


def test_variance_shares_never_sum_past_one():
    rng = np.random.default_rng(1)
    for matrix in [rng.normal(size=(5, 9)), rng.exponential(size=(12, 3)), striated(), striated().T]:
        shares = variance_shares(matrix)
        assert 0 <= shares["index_share"] and 0 <= shares["layer_share"]
        assert shares["index_share"] + shares["layer_share"] <= 1 + 1e-9
    assert variance_shares(striated())["index_share"] > 0.9


def test_importance_dominant_and_top_k():
    matrix = np.array([[1.0, 9.0, 3.0, 5.0], [3.0, 7.0, 5.0, 1.0]])
    np.testing.assert_allclose(index_importance(matrix), [2.0, 8.0, 4.0, 3.0])
    assert dominant_index(matrix) == 1
    assert top_k_indices(matrix, 3) == [1, 2, 3]


def test_rank_of_counts_from_the_largest():
    values = np.array([0.5, 3.0, -1.0, 2.0])
    assert [rank_of(values, i) for i in range(4)] == [3, 1, 4, 2]


def test_vertical_continuity_counts_layers_where_the_index_is_in_the_top_k():
    matrix = striated(layers=6, index=7)
    assert vertical_continuity(matrix, 7, k=1) == 1.0
    matrix[:3, 7] = -1  # now last in the first half of the layers
    assert vertical_continuity(matrix, 7, k=5) == 0.5
    assert vertical_continuity(matrix, 7, k=20) == 1.0


def test_importance_correlations_is_a_symmetric_spearman_table():
    base = np.arange(10.0)
    table = importance_correlations({"a": base, "b": base ** 3, "c": -base})
    assert list(table.index) == list(table.columns) == ["a", "b", "c"]
    assert table.loc["a", "b"] == pytest.approx(1.0)  # monotone transform: rank-identical
    assert table.loc["a", "c"] == pytest.approx(-1.0)
    np.testing.assert_allclose(table.to_numpy(), table.to_numpy().T)
    np.testing.assert_allclose(np.diag(table), 1.0)


def test_top_k_agreement_is_the_mean_pairwise_overlap():
    a = np.array([9.0, 8, 7, 0, 0, 0])
    b = np.array([9.0, 0, 0, 8, 7, 0])
    c = np.array([0.0, 0, 0, 9, 8, 7])
    assert top_k_agreement({"a": a, "b": b}, k=1) == 1.0
    assert top_k_agreement({"a": a, "c": c}, k=1) == 0.0
    # pairs: a-b share {0} of 3, a-c share nothing, b-c share {3, 4}
    assert top_k_agreement({"a": a, "b": b, "c": c}, k=3) == pytest.approx((1 / 3 + 0 + 2 / 3) / 3)
    with pytest.raises(ValueError):
        top_k_agreement({"a": a}, k=1)


def test_shuffled_control_keeps_rows_but_breaks_striations():
    matrix = striated(layers=12, hidden=40, index=7)
    shuffled = shuffled_control(matrix, seed=3)
    for row, new in zip(matrix, shuffled):
        np.testing.assert_array_equal(np.sort(row), np.sort(new))
    assert vertical_continuity(matrix, 7, k=5) == 1.0
    assert vertical_continuity(shuffled, 7, k=5) < 0.5
    assert variance_shares(shuffled)["index_share"] < variance_shares(matrix)["index_share"] / 2
    np.testing.assert_array_equal(shuffled, shuffled_control(matrix, seed=3))
    assert not np.array_equal(shuffled, shuffled_control(matrix, seed=4))


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
    from conftest import tiny_model
    from irmlib.host import FAMILIES, Host

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
        tiny_host.final_norm.weight.fill_(1.0)
        tiny_host.final_norm.weight[3] = -7.0
        tiny_host.lm_head.weight.zero_()
        tiny_host.lm_head.weight[:4, 11] = 1.0  # column 11 has norm sqrt(4)
    states = torch.ones(8, tiny_host.n_layers, tiny_host.hidden_size)
    states[0, 2, 20] = 30.0
    table = host_index_table(tiny_host, states)
    assert list(table.columns) == ["massive_ratio_max", "final_norm_weight", "lm_head_column_norm"]
    assert len(table) == tiny_host.hidden_size
    assert table["massive_ratio_max"].idxmax() == 20 and table.loc[20, "massive_ratio_max"] == pytest.approx(30.0)
    assert table["final_norm_weight"].idxmax() == 3 and table.loc[3, "final_norm_weight"] == 7.0
    assert table.loc[11, "lm_head_column_norm"] == pytest.approx(2.0) and table["lm_head_column_norm"].sum() == 2.0


def test_mean_difference_steering_pools_real_tokens(tiny_host):
    emotion_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    emotion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    neutral_ids = torch.tensor([[20, 21, 22]])
    steering = mean_difference_steering(tiny_host, (emotion_ids, emotion_mask), (neutral_ids, torch.ones_like(neutral_ids)))
    assert steering.shape == (tiny_host.n_layers, tiny_host.hidden_size)
    raw_emotion_a, _ = layer_outputs(tiny_host, emotion_ids[:1])
    raw_emotion_b, _ = layer_outputs(tiny_host, emotion_ids[1:, :2])
    raw_neutral, _ = layer_outputs(tiny_host, neutral_ids)
    emotion_tokens = torch.cat([raw_emotion_a[0], raw_emotion_b[0]])  # 6 tokens, weighted equally
    expected = emotion_tokens.double().mean(0) - raw_neutral[0].double().mean(0)
    np.testing.assert_allclose(steering, expected.numpy(), atol=1e-5)
    same = mean_difference_steering(tiny_host, (neutral_ids, torch.ones_like(neutral_ids)), (neutral_ids, torch.ones_like(neutral_ids)))
    np.testing.assert_array_equal(same, 0.0)
