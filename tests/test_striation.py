"""Striation measures (irmlib.striation): known-answer matrices, the shared dominant index, the
signed heatmap matrix and the tracker that measures striations during training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import striated
from irmlib.irm import IRM, IRMConfig
from irmlib.striation import (
    StriationTracker, dominant_index, importance_correlations, index_importance, magnitude_matrix, rank_of,
    shared_dominant_index, shuffled_control, signed_matrix, top_k_agreement, top_k_indices, variance_shares,
    vertical_continuity,
)


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


def test_signed_matrix_keeps_the_sign_and_pools_tokens():
    a = -torch.ones(1, 2, 3)
    b = torch.full((3, 2, 3), 5.0)
    np.testing.assert_allclose(signed_matrix([a, b]), (-1 + 15) / 4)
    np.testing.assert_allclose(signed_matrix(torch.stack([torch.ones(2, 3), -torch.ones(2, 3)])), 0.0)


def test_shared_dominant_index_is_the_most_frequent_with_ties_broken_by_pooled_importance():
    runs = {"a": striated(index=3, seed=0), "b": striated(index=3, seed=1), "c": striated(index=9, seed=2)}
    assert shared_dominant_index(runs) == 3
    # A tie between indices that each dominate two runs goes to the larger pooled importance.
    tie = {"a": striated(index=3, seed=0), "b": striated(index=3, seed=1), "c": striated(index=9, seed=2), "d": striated(index=9, seed=3)}
    tie["c"][:, 9] += 5
    tie["d"][:, 9] += 5  # index 9 is larger in its runs
    assert shared_dominant_index(tie) == 9
    # Several runs, no index dominating two of them: no shared index (it was the larger one, 9, before).
    apart = {"a": striated(index=3, seed=0), "b": striated(index=9, seed=1)}
    apart["b"][:, 9] += 5
    assert shared_dominant_index(apart) is None
    assert shared_dominant_index({"a": striated(index=4)}) == 4
    with pytest.raises(ValueError):
        shared_dominant_index({})


def test_tracker_sees_a_planted_striation(tiny_host):
    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(tiny_host, init="paper"))
    inputs = torch.randn(20, tiny_host.hidden_size)
    before = StriationTracker(inputs)(irm)
    with torch.no_grad():
        irm.mlp[-1].bias.view(irm.config.n_injected, -1)[:, 11] = 5.0
    after = StriationTracker(inputs)(irm)
    assert after["dominant_index"] == 11 and after["vertical_continuity"] == 1.0
    assert after["index_share"] > 0.9 > before["index_share"]
    assert after["top5"].split()[0] == "11"
