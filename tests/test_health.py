"""A run's health (irmlib.health): the yardstick, the output's size against the host's residual
without the first token, the two flags and whether the dominant index settled."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from train_tiny import run, tiny_rows

from irmlib.health import flagged_runs, index_settled, is_evidence, make_probe, not_first_tokens, run_flags, yardstick_loss
from irmlib.inject import inject
from irmlib.irm import IRM, IRMConfig, load_irm
from irmlib.precision import choose_precision
from irmlib.profile import AnalysisConfig
from irmlib.prompts import make_collate
from irmlib.residual import host_hidden_states
from irmlib.striation import output_rms_ratio


def test_not_first_tokens_drops_each_texts_first_real_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]])  # the last row padded on the left
    assert not_first_tokens(mask).tolist() == [False, True, True, False, True, False, True, True]


def test_the_yardstick_is_the_next_token_loss_on_real_tokens_by_hand(tiny_host):
    batch = make_collate(0)(tiny_rows(3, 0))  # right padding with 0, labels -100 on it
    logits = tiny_host.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    log_p = F.log_softmax(logits, -1)
    terms = []
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        terms += [-log_p[row, i, batch["input_ids"][row, i + 1]].item() for i in range(n - 1)]
    assert yardstick_loss(tiny_host, batch) == pytest.approx(np.mean(terms), rel=1e-5)
    # An IRM that writes into the host changes it; the padding does not.
    irm = IRM(IRMConfig.for_host(tiny_host, init="torch"))
    with inject(tiny_host, irm, scale=50.0):
        assert abs(yardstick_loss(tiny_host, batch) - np.mean(terms)) > 1e-3
    wider = make_collate(0)(tiny_rows(3, 0) + [{"input_ids": list(range(3, 40)), "labels": list(range(3, 40))}])
    wider = {key: value[:3] for key, value in wider.items()}
    assert yardstick_loss(tiny_host, wider) == pytest.approx(np.mean(terms), rel=1e-5)


def test_the_output_ratio_leaves_out_the_first_token():
    outputs = torch.ones(5, 2, 4)  # [tokens, injected layers, hidden]
    outputs[0] = 1e4  # a first token's huge value: ignored
    not_first = torch.tensor([False, True, True, True, True])
    ratio = output_rms_ratio(outputs, not_first, np.array([9.0, 2.0, 4.0]), (1, 2))
    assert ratio.tolist() == [0.5, 0.25]


def test_the_probe_measures_the_host_without_each_texts_first_token(tiny_text_host):
    probe = make_probe(tiny_text_host, ["Why is the sky blue?", "Name a colour."], ["Because of air.", "Red and green."], 32)
    assert probe.batch["labels"][probe.batch["attention_mask"] == 0].eq(-100).all()
    states = host_hidden_states(tiny_text_host, input_ids=probe.batch["input_ids"], attention_mask=probe.batch["attention_mask"])
    assert len(probe.irm_inputs) == len(states) == len(probe.not_first) == int(probe.batch["attention_mask"].sum())
    kept = states[probe.not_first].double()
    assert probe.host_rms == pytest.approx(kept.pow(2).mean(dim=(0, 2)).sqrt().numpy())
    assert len(probe.host_rms) == tiny_text_host.n_layers
    row = probe.tracker(k=2)(IRM(IRMConfig.for_host(tiny_text_host, init="torch", injected_layers=(0, 1))))
    assert {"output_rms_ratio", "output_rms_ratio_max", "dominant_index", "index_share"} <= set(row)
    assert 0 < row["output_rms_ratio"] <= row["output_rms_ratio_max"]


ANALYSIS = AnalysisConfig(unstable_grad_multiple=10.0, unstable_early_steps=3, host_damaged_margin=1.0)


def flags(norms, start=10.0, last=4.0, host=3.0, end=3.5) -> dict:
    summary = {"initial_val_loss": start, "last_val_loss": last, "yardstick_host": host, "yardstick_end": end}
    return run_flags(summary, pd.DataFrame({"grad_norm": norms}), ANALYSIS)


def test_the_flags_follow_the_stated_margins():
    calm = flags([2.0, 1.0, 3.0, 19.0])  # early median 2: 19 is under 10 x 2
    assert calm["unstable"] is False and calm["host_damaged"] is False and calm["grad_norm_peak_ratio"] == pytest.approx(9.5)
    assert flags([2.0, 1.0, 3.0, 21.0])["unstable"] is True  # a spike over 10 x the early median
    rose = flags([1.0, 1.0, 1.0], start=4.0, last=4.5)  # the objective's own loss ended above its start
    assert rose["unstable"] is True and rose["val_loss_rose"] is True
    damaged = flags([1.0, 1.0, 1.0], end=4.01)
    assert damaged["host_damaged"] is True and damaged["unstable"] is False and damaged["yardstick_rise"] == pytest.approx(1.01)
    assert flags([1.0, 1.0, 1.0], end=3.99)["host_damaged"] is False
    unmeasured = run_flags({"initial_val_loss": 1.0}, pd.DataFrame({"step": [1]}), ANALYSIS)
    assert unmeasured["unstable"] is None and unmeasured["host_damaged"] is None


def test_only_an_unflagged_measured_run_is_evidence():
    assert is_evidence("ok") and not any(map(is_evidence, ("host damaged", "unstable", "unstable, host damaged", "not measured")))
    flags = {"a-seed0": "ok", "b-seed0": "host damaged", "c-seed0": "not measured"}
    assert flagged_runs(flags, ["base", "b-seed0", "a-seed0", "c-seed0", "b-seed0"]) == "b-seed0: host damaged; c-seed0: not measured"
    assert flagged_runs(flags, ["base", "a-seed0"]) == "ok"


def test_settled_means_the_final_index_held_over_the_last_window():
    steps = [0, 10, 20, 30, 40, 50, 60]
    held = pd.DataFrame({"step": steps, "dominant_index": [5, 9, 9, 7, 7, 7, 7]})
    assert index_settled(held, 1 / 3) == {"final_index": 7, "settled": True, "held_since": 30}
    late = held.assign(dominant_index=[5, 7, 7, 7, 7, 9, 7])
    assert index_settled(late, 1 / 3) == {"final_index": 7, "settled": False, "held_since": 60}
    assert index_settled(held.iloc[:2], 1 / 3)["settled"] is None  # one tracked step in the window
    assert index_settled(pd.DataFrame(), 1 / 3)["final_index"] is None


def test_a_run_records_the_yardstick_and_the_gradient_norm(tmp_path):
    from irmlib.host import Host
    from conftest import tiny_model

    host = Host.from_model(tiny_model("llama"), name="tiny-llama")
    probe_batch = make_collate(0)(tiny_rows(4, 2))
    summary = run(str(tmp_path / "run"), epochs=1, host=host, yardstick=probe_batch, track_every=2, init="zero")
    # The run measures under its precision (bf16 autocast on a CPU with native bf16); the choice is
    # cached per process, so this is the run's.
    precision = choose_precision()
    with torch.inference_mode():
        host_value = yardstick_loss(host, probe_batch, precision)
    # A zero-init IRM writes nothing: before the first step the host is untouched.
    assert summary["yardstick_host"] == pytest.approx(host_value) and summary["yardstick_start"] == pytest.approx(host_value)
    assert summary["yardstick_end"] != pytest.approx(host_value) and math.isfinite(summary["yardstick_end"])
    tracking = pd.read_csv(tmp_path / "run" / "tracking.csv")
    assert tracking.step.tolist() == [0, 2, 4, 6] and tracking.yardstick.iloc[0] == pytest.approx(host_value)
    assert tracking.yardstick.iloc[-1] == pytest.approx(summary["yardstick_end"])  # the last step is tracked: the same IRM
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert (history.grad_norm > 0).all() and len(history) == 6
    assert summary["last_val_loss"] == pytest.approx(history.val_loss.dropna().iloc[-1])  # the last check, not the best
    assert json.loads((tmp_path / "run" / "done.json").read_text())["yardstick_end"] == summary["yardstick_end"]
    # The last step untracked (6 steps, tracked every 4): the end is measured on the last IRM itself.
    untracked_end = run(str(tmp_path / "every4"), epochs=1, host=host, yardstick=probe_batch, track_every=4, init="zero")
    assert pd.read_csv(tmp_path / "every4" / "tracking.csv").step.tolist() == [0, 4]
    with inject(host, load_irm(tmp_path / "every4" / "last", host)), torch.inference_mode():
        assert untracked_end["yardstick_end"] == pytest.approx(yardstick_loss(host, probe_batch, precision))


def test_a_run_stops_once_the_yardstick_is_far_above_the_hosts_twice(tmp_path):
    from irmlib.host import Host
    from conftest import tiny_model

    host = Host.from_model(tiny_model("llama"), name="tiny-llama")
    probe_batch = make_collate(0)(tiny_rows(4, 2))
    # With torch's default init the IRM puts the tiny random host's yardstick about 0.03 nats above its own
    # from the start: with a margin under that, the first two tracked steps are above it and the run stops at step 1.
    summary = run(str(tmp_path / "run"), epochs=3, host=host, yardstick=probe_batch, track_every=1, init="torch",
                  stop_yardstick_margin=0.02)
    tracking = pd.read_csv(tmp_path / "run" / "tracking.csv")
    above = tracking.yardstick > summary["yardstick_host"] + 0.02
    assert summary["stopped"] == "yardstick" and above.tolist() == [True, True] and summary["steps"] == 1
    assert summary["last_val_loss"] is not None  # a stopped run is validated where it stopped
    calm = run(str(tmp_path / "calm"), epochs=1, host=host, yardstick=probe_batch, track_every=1, stop_yardstick_margin=100.0)
    assert calm["stopped"] == "epochs" and calm["steps"] == 6
