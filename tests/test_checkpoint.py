"""The resumable checkpoint `last/` is written as one unit: a kill anywhere in a checkpoint write
leaves IRM weights and optimizer state of the same step, and the resumed run ends where an
uninterrupted one ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import Killed, kill_on_call
from irmlib.train import _recover_last
from train_tiny import run


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "irm.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def step_of(last: Path) -> int:
    return torch.load(last / "trainer_state.pt", weights_only=False)["global_step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Uninterrupted tiny runs (2 epochs of 6 steps, a checkpoint every 2 steps): the whole run,
    and runs stopped after 2 and 4 steps, whose last/ holds the weights of exactly that step."""
    root = tmp_path_factory.mktemp("reference")
    run(str(root / "whole"), epochs=2)
    for steps in (2, 4):
        run(str(root / f"step{steps}"), steps=steps, epochs=2)
    return root


def test_kill_between_weights_and_trainer_state_resumes_a_consistent_pair(tmp_path, monkeypatch, reference):
    # The second checkpoint (step 4) dies after its weights are written, before its trainer state.
    kill_on_call(monkeypatch, torch, "save", nth=2)
    with pytest.raises(Killed):
        run(str(tmp_path / "killed"), epochs=2)
    monkeypatch.undo()
    last = tmp_path / "killed" / "last"
    assert step_of(last) == 2
    assert same_weights(weights(last), weights(reference / "step2" / "last")), "step-2 state with other weights"
    run(str(tmp_path / "killed"), epochs=2)
    assert not any((tmp_path / "killed").glob("last.*")), "staging leftovers remain after the resumed run"
    assert same_weights(weights(tmp_path / "killed" / "last"), weights(reference / "whole" / "last"))
    assert same_weights(weights(tmp_path / "killed" / "best"), weights(reference / "whole" / "best"))


def test_kill_between_the_two_renames_recovers_the_new_checkpoint(tmp_path, monkeypatch, reference):
    # The step-4 checkpoint is staged and the step-2 one renamed away; the kill comes before the
    # staged directory is renamed in, so for a moment there is no last/ at all.
    kill_on_call(monkeypatch, Path, "rename", nth=2, when=lambda source, target: Path(target).name == "last")
    with pytest.raises(Killed):
        run(str(tmp_path / "killed"), epochs=2)
    monkeypatch.undo()
    run_dir = tmp_path / "killed"
    assert not (run_dir / "last").exists() and step_of(run_dir / "last.old") == 2 and step_of(run_dir / "last.staging") == 4
    _recover_last(run_dir)
    assert step_of(run_dir / "last") == 4 and not (run_dir / "last.old").exists() and not (run_dir / "last.staging").exists()
    assert same_weights(weights(run_dir / "last"), weights(reference / "step4" / "last"))
    run(str(run_dir), epochs=2)
    assert same_weights(weights(run_dir / "last"), weights(reference / "whole" / "last"))


def fake_checkpoint(directory: Path, step: int, complete: bool = True) -> None:
    """A checkpoint directory marked with its step; incomplete: weights without trainer state."""
    directory.mkdir()
    (directory / "irm.safetensors").write_text(str(step))
    if complete:
        torch.save({"global_step": step}, directory / "trainer_state.pt")


@pytest.mark.parametrize("present,expected", [
    ({"last": 4, "last.staging": 6, "last.old": 2}, 4),  # killed after the swap or while staging: last/ stands
    ({"last.staging": 6, "last.old": 4}, 6),  # killed between the renames: the staged one is complete
    ({"last.staging": -6, "last.old": 4}, 4),  # a staged directory without trainer state is never taken
    ({"last.staging": 2}, 2),  # the first checkpoint, killed before its rename
    ({"last.staging": -2}, None),  # the first checkpoint, killed while staging: start from scratch
])
def test_recovery_keeps_exactly_one_complete_checkpoint(tmp_path, present, expected):
    for name, step in present.items():
        fake_checkpoint(tmp_path / name, abs(step), complete=step > 0)
    _recover_last(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if expected is None else ["last"])
    if expected is not None:
        assert step_of(tmp_path / "last") == expected
        assert (tmp_path / "last" / "irm.safetensors").read_text() == str(expected)
