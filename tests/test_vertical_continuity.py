"""Notebook 04's steering-vector baselines (irmlib.studies.vertical_continuity): the mean
difference of residual streams and CAA, against the host's own layer outputs."""

from __future__ import annotations

import numpy as np
import torch

from conftest import tiny_tokenizer
from irmlib.host import Host
from irmlib.residual import host_hidden_states
from irmlib.studies.vertical_continuity import caa_steering, mean_difference_steering
from test_residual import layer_outputs


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


def test_caa_steering_is_the_last_token_difference_of_block_outputs(tiny_host):
    host = Host(model=tiny_host.model, tokenizer=tiny_tokenizer(), name="tiny", family=tiny_host.family)
    pairs = [("w5 w6 w7", "w8 w9"), ("w10 w11", "w12 w13 w14 w15")]
    vector = caa_steering(host, pairs, batch_size=1)
    assert vector.shape == (host.n_layers, host.hidden_size)
    last = lambda text: host_hidden_states(host, texts=[text])[-1].double().numpy()  # [layers, hidden] at the last token
    expected = np.mean([last(p) - last(n) for p, n in pairs], axis=0)
    np.testing.assert_allclose(vector, expected, atol=1e-4)
