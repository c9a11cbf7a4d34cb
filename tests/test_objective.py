"""The objective options against a transcription of the paper's code, the inits, and the
training options of notebook 06 (validation checks, tracking)."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from irmlib.irm import IRM, IRMConfig
from irmlib.objective import OBJECTIVES, l1_penalty, lm_loss, make_paper_collate, resolve_objective
from irmlib.prompts import make_collate
from irmlib.train import TrainConfig, train_irm
from train_tiny import tiny_rows

EOS = 2


def paper_code_loss(model, texts: list[list[int]], length: int, double_shift: bool) -> torch.Tensor:
    """The paper's code, transcribed: its dataset (text + EOS, x = item[:length], y = item[1:length+1],
    or x = y = item at the commit with the dataset's shift commented out), its collate (both padded
    with the pad token, EOS, to `length`; mask 1 on x's tokens) and its forward's loss (logits[:, :-1]
    against y[:, 1:], CrossEntropyLoss() with no ignore index)."""
    xs, ys = [], []
    for text in texts:
        if double_shift:
            item = text + [EOS]
            x, y = item[:len(text)][:length], item[1:len(text) + 1][:length]
        else:
            x, y = text[:length], text[:length]
        xs.append(x)
        ys.append(y)
    mask = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in xs])
    x = torch.tensor([x + [EOS] * (length - len(x)) for x in xs])
    y = torch.tensor([y + [EOS] * (length - len(y)) for y in ys])
    logits = model(input_ids=x, attention_mask=mask).logits
    return nn.CrossEntropyLoss()(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))


@pytest.mark.parametrize("label_shift", [1, 2])
def test_paper_code_objective_equals_a_transcription_of_the_papers_code(tiny_host, label_shift):
    texts = [row["input_ids"] for row in tiny_rows(5, 3)]
    length = 16
    # Our rows end in EOS (the tokenizer appends it); the commit without the extra shift never appended one.
    rows = [{"input_ids": t + [EOS] if label_shift == 2 else t} for t in texts]
    batch = make_paper_collate(EOS, length, label_shift)(rows)
    with torch.no_grad():
        ours = lm_loss(tiny_host, batch["input_ids"], batch["attention_mask"], batch["labels"], label_shift)
        theirs = paper_code_loss(tiny_host.model, texts, length, double_shift=label_shift == 2)
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)
    # Most terms are padding: a shorter text changes the share of "EOS after EOS" and so the loss.
    assert (batch["labels"] == EOS).float().mean() > 0.3


def test_fixed_objective_ignores_padding_and_paper_code_scores_it(tiny_host):
    rows = [{"input_ids": t["input_ids"] + [EOS], "labels": t["input_ids"] + [EOS]} for t in tiny_rows(3, 0)]
    fixed = make_collate(0)(rows)
    paper = make_paper_collate(EOS, 30, 1)(rows)
    with torch.no_grad():
        a = lm_loss(tiny_host, fixed["input_ids"], fixed["attention_mask"], fixed["labels"], 1)
        b = lm_loss(tiny_host, paper["input_ids"], paper["attention_mask"], paper["labels"], 1)
    assert not torch.allclose(a, b)
    assert paper["labels"].shape == (3, 30) and (paper["labels"] != -100).all()
    assert make_paper_collate(EOS, 30, 2)(rows)["labels"].shape == (3, 31)


def test_objective_presets_and_overrides():
    assert OBJECTIVES["paper_code"].label_shift == 2 and OBJECTIVES["paper_code"].pad_in_loss
    assert OBJECTIVES["fixed"].label_shift == 1 and not OBJECTIVES["fixed"].pad_in_loss
    only_padding = resolve_objective("paper_code", label_shift=1)
    assert only_padding.pad_in_loss and only_padding.label_shift == 1
    with pytest.raises(ValueError, match="objective 'paper' unknown"):
        resolve_objective("paper")
    with pytest.raises(ValueError, match="label_shift must be 1"):
        resolve_objective("fixed", label_shift=3)


def test_l1_modes():
    vectors = torch.ones(2, 4, 3, 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert l1_penalty(vectors, mask, 0.5, "sum").item() == pytest.approx(0.5 * 2 * 4 * 3 * 5)
    assert l1_penalty(vectors, mask, 0.5, "mean").item() == pytest.approx(0.5 * 15)


def test_inits():
    config = dict(hidden_size=64, n_layers=3)
    paper = IRM(IRMConfig(**config, init="paper"))
    linears = [m for m in paper.mlp if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05) and abs(weights.mean().item()) < 1e-3
    torch_default = IRM(IRMConfig(**config, init="torch"))
    first = torch_default.mlp[0]
    assert first.weight.abs().max() <= 1 / 64 ** 0.5 and torch.count_nonzero(first.bias) > 0
    zero = IRM(IRMConfig(**config, init="zero"))
    assert zero(torch.randn(2, 64)).abs().max() == 0


def test_output_rotation_is_an_orthogonal_change_of_basis():
    torch.manual_seed(0)
    plain = IRM(IRMConfig(hidden_size=16, n_layers=2, init="paper"))
    rotated = IRM(IRMConfig(hidden_size=16, n_layers=2, init="paper", output_rotation_seed=3))
    rotated.load_state_dict(plain.state_dict())
    q = rotated.rotation
    assert torch.allclose(q @ q.T, torch.eye(16), atol=1e-5)
    x = torch.randn(4, 16)
    assert torch.allclose(rotated(x), plain(x) @ q.T, atol=1e-6)
    again = IRM(IRMConfig(hidden_size=16, n_layers=2, output_rotation_seed=3))
    assert torch.equal(again.rotation, q) and "rotation" not in rotated.state_dict()


def test_validation_checks_per_epoch_patience_in_checks_and_tracking(tiny_host, tmp_path):
    calls = []

    def tracker(irm):
        calls.append(1)
        return {"mean_abs": float(irm(torch.randn(3, tiny_host.hidden_size)).abs().mean())}

    config = TrainConfig(epochs=2, batch_size=4, lr=1e-3, val_checks_per_epoch=3, track_every=2, checkpoint_every=100,
                         irm={"init": "paper"})
    summary = train_irm(tiny_host, tiny_rows(24, 0), tiny_rows(8, 1), make_collate(0), config, tmp_path / "run",
                        progress=False, tracker=tracker)
    with open(tmp_path / "run" / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    assert summary["steps"] == 12 and sum(1 for r in history if r["val_loss"]) == 6  # 3 checks x 2 epochs
    with open(tmp_path / "run" / "tracking.csv") as handle:
        tracking = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in tracking] == [0, 2, 4, 6, 8, 10, 12] == list(range(0, 13, 2))[: len(calls)]
    stopping = TrainConfig(epochs=50, batch_size=4, lr=1e-30, patience=2, val_checks_per_epoch=2, irm={"init": "paper"})
    stopped = train_irm(tiny_host, tiny_rows(24, 0), tiny_rows(8, 1), make_collate(0), stopping, tmp_path / "stop", progress=False)
    assert stopped["stopped"] == "early_stopping" and stopped["steps"] < 50 * 6


def test_paper_code_objective_trains(tiny_host, tmp_path):
    rows = [{"input_ids": r["input_ids"] + [EOS]} for r in tiny_rows(24, 0)]
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-3, max_length=16, objective="paper_code", l1=True,
                         irm={"init": "paper"})
    summary = train_irm(tiny_host, rows, rows[:8], make_paper_collate(EOS, 16, 2), config, tmp_path / "run", progress=False)
    assert summary["last_train_loss"] < summary["first_train_loss"]
