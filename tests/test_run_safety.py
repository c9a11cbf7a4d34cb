"""Run directories are safe to share and to run twice: loading never executes code, a damaged
file is named with what to do, and only one process trains a run at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from irmlib.errors import CompanionError, RunFileError, RunLockedError
from irmlib.generate import CapturedOutputs
from irmlib.host import Host
from irmlib.irm import IRM, IRMConfig, load_irm, save_irm
from irmlib.prompts import make_collate
from irmlib.train import TrainConfig, read_history, read_tracking, train_irm

from conftest import tiny_model

ROWS = [{"input_ids": list(range(3, 3 + n)), "labels": list(range(3, 3 + n))} for n in (5, 7, 9, 6, 8, 10, 4, 6)]


@pytest.fixture(scope="module")
def host():
    return Host.from_model(tiny_model("llama"), name="tiny-llama")


def train(host, run_dir: Path, **config) -> dict:
    settings = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 1, "irm": {"init": "paper"}, **config}
    return train_irm(host, ROWS, ROWS[:4], make_collate(0), TrainConfig(**settings), run_dir, progress=False)


class Payload:
    """Unpickling this writes a marker file: what a crafted trainer_state.pt could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("code ran",))


def test_a_trainer_state_that_would_run_code_is_refused(host, tmp_path):
    run_dir = tmp_path / "run"
    train(host, run_dir, epochs=2, max_steps=1)
    (run_dir / "done.json").unlink()  # an unfinished run, so the next call resumes from last/
    marker = tmp_path / "marker"
    torch.save({"optimizer": {}, "scheduler": {}, "history": Payload(str(marker))}, run_dir / "last" / "trainer_state.pt",
               pickle_protocol=2)
    with pytest.raises(RunFileError, match="trainer_state.pt") as raised:
        train(host, run_dir, epochs=2)
    assert not marker.exists(), "loading the state ran the crafted code"
    assert "Delete" in str(raised.value) and isinstance(raised.value, CompanionError)


@pytest.mark.parametrize("damage", ["truncated weights", "json", "unknown key", "wrong shape"])
def test_a_damaged_checkpoint_names_its_file(host, tmp_path, damage):
    directory = tmp_path / "run" / "best"
    irm = IRM(IRMConfig.for_host(host, init="paper"))
    save_irm(irm, directory, host.shape)
    if damage == "truncated weights":
        weights = directory / "irm.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        name = "irm.safetensors"
    elif damage == "json":
        (directory / "irm.json").write_text('{"config": {')
        name = "irm.json"
    elif damage == "unknown key":
        (directory / "irm.json").write_text((directory / "irm.json").read_text().replace('"init"', '"colour": 3, "init"'))
        name = "irm.json"
    else:
        save_irm(IRM(IRMConfig.for_host(host, width_factor=2)), tmp_path / "other", host.shape)
        (directory / "irm.safetensors").write_bytes((tmp_path / "other" / "irm.safetensors").read_bytes())
        name = "irm.safetensors"
    with pytest.raises(RunFileError, match=name) as raised:
        load_irm(directory, host)
    assert "retrain" in str(raised.value)


def test_damaged_records_and_tables_name_their_file(host, tmp_path):
    run_dir = tmp_path / "run"
    train(host, run_dir, max_steps=2, track_every=None)
    (run_dir / "done.json").write_text("{not json")
    with pytest.raises(RunFileError, match="done.json"):
        train(host, run_dir)
    (run_dir / "history.csv").write_text('step,"lm_loss\n1,2\n')
    with pytest.raises(RunFileError, match="history.csv"):
        read_history(run_dir)
    (run_dir / "tracking.csv").write_text("index_share\n0.1\n")
    with pytest.raises(RunFileError, match="tracking.csv"):
        read_tracking(run_dir)
    capture = tmp_path / "capture.safetensors"
    CapturedOutputs([torch.zeros(3, 2, 4)], [2]).save(capture)
    capture.write_bytes(capture.read_bytes()[:40])
    with pytest.raises(RunFileError, match="capture.safetensors"):
        CapturedOutputs.load(capture)


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from irmlib.train import writer_lock
    with writer_lock(Path(sys.argv[1])):
        print("holding", flush=True)
        time.sleep(120)
""")


def test_a_second_writer_stops_naming_the_holder_and_a_killed_holder_blocks_nothing(host, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            train(host, run_dir, max_steps=1)
        assert time.perf_counter() - started < 10, "the second writer stops at once, it does not wait"
        assert not (run_dir / "last").exists() and not (run_dir / "history.csv").exists(), "it wrote nothing"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    summary = train(host, run_dir, max_steps=1)  # the killed holder's lock is gone with it
    assert summary["steps"] == 1 and not (run_dir / ".writer.pid").exists()
    assert train(host, run_dir, max_steps=1) == summary, "a finished run is read, with no lock to wait for"
