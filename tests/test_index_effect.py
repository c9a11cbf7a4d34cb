"""irmlib.index_effect: the conditions of the IRM's write, the measures read in each, the
temperature fit and the verdict between the norm-knob and the inert hypotheses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from irmlib.health import yardstick_loss
from irmlib.index_effect import (CONDITIONS, EffectRules, dominant_index_effect, effect_record, effect_shares, effect_verdict,
                                 measure_effect, next_gain_index, temperature_fit, write_transform)
from irmlib.irm import IRM, IRMConfig


def batch_of(rows: list[list[int]]) -> dict:
    """Right-padded input_ids, attention_mask and labels (-100 on padding), as a probe holds them."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = labels[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def writing_only_at(host, index: int, size: float = 3.0) -> IRM:
    """An IRM whose every layer's write is `size` at `index` and zero elsewhere, whatever it reads."""
    irm = IRM(IRMConfig.for_host(host, init="zero"))
    with torch.no_grad():
        irm.mlp[-1].bias.view(irm.config.n_injected, irm.config.hidden_size)[:, index] = size
    return irm.eval()


def test_each_condition_changes_the_write_as_named():
    vectors = torch.arange(24.0).reshape(1, 2, 3, 4)  # [batch, tokens, layers, hidden]
    only = write_transform("only", 1)(vectors)
    assert torch.equal(only[..., 1], vectors[..., 1]) and only[..., [0, 2, 3]].abs().sum() == 0
    masked = write_transform("masked", 1)(vectors)
    assert masked[..., 1].abs().sum() == 0 and torch.equal(masked[..., [0, 2, 3]], vectors[..., [0, 2, 3]])
    moved = write_transform("moved", 1, 3)(vectors)
    assert torch.equal(moved[..., 3], vectors[..., 1]) and torch.equal(moved[..., 1], vectors[..., 3])
    assert torch.equal(moved[..., [0, 2]], vectors[..., [0, 2]])
    assert write_transform("host", 1) is None and write_transform("irm", 1) is None
    with pytest.raises(ValueError, match="another index"):
        write_transform("moved", 1, 1)
    with pytest.raises(ValueError, match="unknown"):
        write_transform("swap", 1)


def test_next_gain_index_is_the_neighbour_by_smallest_gain():
    gains = np.array([0.9, 0.1, 0.5, 0.3, 2.0])
    assert next_gain_index(gains, 1) == 3  # 0.1 -> 0.3
    assert next_gain_index(gains, 3) == 2
    assert next_gain_index(gains, 4) == 0  # the largest: the one before it


def test_temperature_fit_recovers_a_planted_temperature():
    z = torch.randn(300, 50, generator=torch.Generator().manual_seed(0)) * 2
    fit = temperature_fit(z, (0.4 * z).log_softmax(-1), chunk=64)
    assert fit["median_beta"] == pytest.approx(0.4, abs=1e-4)
    assert fit["share"] == pytest.approx(1.0, abs=1e-6) and fit["kl_before"] > 0.1
    # One token per position raised, as a write towards a token would: no temperature does that.
    raised = z.clone()
    raised[torch.arange(300), torch.randint(50, (300,), generator=torch.Generator().manual_seed(1))] += 6.0
    assert temperature_fit(z, raised.log_softmax(-1))["share"] < 0.2


def test_conditions_on_a_host_whose_irm_writes_one_index(tiny_host):
    batch = batch_of([[5, 6, 7, 8, 9, 10], [11, 12, 13]])
    index = 7
    with torch.no_grad():
        tiny_host.lm_head.weight.mul_(30)  # a random tiny host is near uniform; a sharper head has something to change
    irm = writing_only_at(tiny_host, index)
    effect = measure_effect(tiny_host, irm, batch, index, moved_to=3, label_shift=2)
    c = effect["conditions"]
    assert list(c) == list(CONDITIONS)
    assert c["host"]["yardstick"] == pytest.approx(yardstick_loss(tiny_host, batch), rel=1e-5)
    # Every write is at the index: keeping only it is the IRM, masking it is the host.
    for key in ("entropy", "yardstick", "objective_loss", "index_share", "top1_probability"):
        assert c["only"][key] == pytest.approx(c["irm"][key], rel=1e-5)
        assert c["masked"][key] == pytest.approx(c["host"][key], rel=1e-5)
    assert c["irm"]["kl_from_irm"] == pytest.approx(0.0, abs=1e-6) and c["host"]["kl_from_irm"] > 1e-4
    assert c["irm"]["index_share"] > c["host"]["index_share"] and c["moved"]["index_share"] < c["irm"]["index_share"]
    assert c["irm"]["objective_loss"] != pytest.approx(c["irm"]["yardstick"])  # the token after next is another target
    record = effect_record(effect)
    assert record["shares"]["yardstick"]["only"] == pytest.approx(1.0, abs=1e-4)
    assert record["shares"]["yardstick"]["masked"] == pytest.approx(0.0, abs=1e-4)
    assert record["shares"]["distribution"]["only"] == pytest.approx(1.0, abs=1e-4)
    assert record["shares"]["distribution"]["masked"] == pytest.approx(0.0, abs=1e-4)
    assert abs(record["shares"]["yardstick"]["irm_change"]) > 0.5
    assert record["verdict"] in ("norm knob (b)", "neither")  # keeping only the index is the IRM; the temperature decides
    # The one call every notebook makes: the write moved to the next index by gain (index 3 here).
    gains = np.arange(tiny_host.hidden_size, 0, -1, dtype=float)  # 1 or more everywhere but below
    gains[[index, 3]] = [0.0, 0.5]
    whole = dominant_index_effect(tiny_host, irm, batch, index, pd.Series(gains), label_shift=2)
    assert whole["moved_to"] == 3 and whole["shares"] == record["shares"] and whole["verdict"] == record["verdict"]


def shares(only: float, masked: float, kl: float = 0.5) -> dict:
    return {"distribution": {"irm_change": kl, "only": only, "masked": masked, "moved": 0.0}}


def test_verdict_follows_the_rules():
    rules = EffectRules(min_change=0.05, much=0.5, little=0.2)
    assert effect_verdict(shares(0.8, 0.1), 0.7, rules) == "norm knob (b)"
    assert effect_verdict(shares(0.8, 0.1), 0.3, rules) == "neither"  # a temperature does not explain it
    assert effect_verdict(shares(0.05, 0.95), 0.0, rules) == "inert (d)"
    assert effect_verdict(shares(-0.3, 0.99), 0.6, rules) == "inert (d)"  # only the index: further from the IRM than the host
    assert effect_verdict(shares(0.4, 0.6), 0.9, rules) == "neither"
    assert effect_verdict(shares(0.05, 0.95, kl=0.01), 0.0, rules) == "no effect to explain"


def test_shares_are_changes_from_the_host_over_the_irms():
    conditions = {c: {"entropy": 1.0, "yardstick": 2.0, "kl_from_irm": 0.8} for c in CONDITIONS}
    conditions["irm"] = {"entropy": 2.0, "yardstick": 4.0, "kl_from_irm": 0.0}
    conditions["only"] = {"entropy": 1.5, "yardstick": 2.5, "kl_from_irm": 0.2}
    conditions["masked"] |= {"kl_from_irm": 1.2}
    out = effect_shares(conditions)
    assert out["entropy"] == {"irm_change": 1.0, "only": 0.5, "masked": 0.0, "moved": 0.0}
    assert out["yardstick"]["only"] == pytest.approx(0.25)
    assert out["distribution"]["irm_change"] == 0.8
    assert out["distribution"]["only"] == pytest.approx(0.75) and out["distribution"]["masked"] == pytest.approx(-0.5)
    assert out["distribution"]["moved"] == pytest.approx(0.0)
