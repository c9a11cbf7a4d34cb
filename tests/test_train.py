"""Training: only the IRM learns, padding never counts, runs are deterministic and resume exactly."""

from __future__ import annotations

import csv
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_model
from irmlib.host import Host
from irmlib.inject import inject
from irmlib.irm import IRM, IRMConfig
from irmlib.objective import lm_loss
from irmlib.prompts import make_collate
from irmlib.train import TrainConfig, TrainingDiverged, train_irm
from train_tiny import run, tiny_rows

HERE = Path(__file__).parent


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / which / "irm.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_padding_does_not_change_the_loss(tiny_host):
    rows = tiny_rows(3, 0)
    short = make_collate(0)(rows)
    padded = make_collate(0)(rows + [{"input_ids": [5] * 30, "labels": [-100] * 30}])
    with torch.no_grad():
        a = lm_loss(tiny_host, short["input_ids"], short["attention_mask"], short["labels"])
        b = lm_loss(tiny_host, padded["input_ids"][:3], padded["attention_mask"][:3], padded["labels"][:3])
    assert torch.allclose(a, b, atol=1e-6)
    assert (padded["labels"][:3, 14:] == -100).all()


def test_only_the_irm_gets_gradients(tiny_host):
    irm = IRM(IRMConfig.for_host(tiny_host, init="torch"))
    batch = make_collate(0)(tiny_rows(4, 0))
    with inject(tiny_host, irm):
        lm_loss(tiny_host, batch["input_ids"], batch["attention_mask"], batch["labels"]).backward()
    assert all(p.grad is None for p in tiny_host.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in irm.parameters())


def host_tensors(host: Host) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer of the host's model (non-persistent buffers included)."""
    return {name: t.detach().clone() for name, t in [*host.model.named_parameters(), *host.model.named_buffers()]}


def hook_count(host: Host) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in host.model.modules())


def test_training_lowers_the_loss_and_leaves_the_host_untouched(tmp_path):
    host = Host.from_model(tiny_model("llama"), name="tiny-llama")
    host_before, hooks_before = host_tensors(host), hook_count(host)
    summary = run(str(tmp_path / "run"), epochs=3, host=host)
    assert summary["last_train_loss"] < summary["first_train_loss"]
    assert {"best", "last", "history.csv", "done.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    with open(tmp_path / "run" / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == summary["steps"] == 18
    assert sum(1 for row in history if row["val_loss"]) == 3
    # The very host object that was trained through: bit-identical, still frozen, no hook left on it.
    host_after = host_tensors(host)
    assert host_after.keys() == host_before.keys()
    assert all(torch.equal(host_before[k], host_after[k]) for k in host_before), "training changed the host"
    assert not any(p.requires_grad for p in host.model.parameters())
    assert hook_count(host) == hooks_before, "a hook was left on the host"


def test_same_seed_gives_identical_weights_and_a_finished_run_is_not_retrained(tmp_path):
    first, second = run(str(tmp_path / "a"), epochs=1), run(str(tmp_path / "b"), epochs=1)
    assert first == {**second, "seconds_per_step": first["seconds_per_step"]}
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    mtime = (tmp_path / "a" / "last" / "irm.safetensors").stat().st_mtime
    run(str(tmp_path / "a"), epochs=1)
    assert (tmp_path / "a" / "last" / "irm.safetensors").stat().st_mtime == mtime


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    """A process killed mid-epoch, started again, ends exactly where an uninterrupted run ends."""
    run(str(tmp_path / "whole"), epochs=2)
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen([sys.executable, str(HERE / "train_tiny.py"), str(tmp_path / "killed"), "--slow", "0.4"], env=env)
    state = tmp_path / "killed" / "last" / "trainer_state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert state.exists(), "the training process wrote no checkpoint"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=False)
    assert saved["global_step"] < 12 and not (tmp_path / "killed" / "done.json").exists()
    run(str(tmp_path / "killed"), epochs=2)
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "killed"))
    assert_same_weights(weights(tmp_path / "whole", "best"), weights(tmp_path / "killed", "best"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    host = Host.from_model(tiny_model("llama"), name="tiny")
    training_forwards = {"n": 0}

    def poison_third_step(module, args, output):
        if torch.is_grad_enabled():
            training_forwards["n"] += 1
            if training_forwards["n"] == 3:
                return output * float("nan")
        return None

    host.lm_head.register_forward_hook(poison_third_step)
    collate = make_collate(0)
    config = TrainConfig(epochs=2, batch_size=4, checkpoint_every=2, irm={"init": "paper"})
    with pytest.raises(TrainingDiverged, match="at step 3"):
        train_irm(host, tiny_rows(24, 0), tiny_rows(8, 1), collate, config, tmp_path / "run", progress=False)
    saved = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=False)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "run").values())


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("max_length", -5), ("epochs", 0)])
def test_non_positive_sizes_are_clear_errors(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        TrainConfig(**{field: value})


@pytest.mark.slow
def test_two_cpu_processes_with_gloo(tmp_path):
    """The same loop under torch.distributed (2 CPU processes, gloo), as `accelerate launch` runs it."""
    env = {**os.environ, "PYTHONPATH": str(HERE), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                             str(HERE / "train_tiny.py"), str(tmp_path / "ddp"), "--epochs", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "ddp" / "done.json").read_text()
    assert '"steps": 6' in summary  # 24 rows, batch 4, 2 processes: 3 steps per epoch
    assert (tmp_path / "ddp" / "best" / "irm.safetensors").exists()


def test_same_seed_gives_identical_greedy_generations(tmp_path):
    from irmlib.irm import load_irm

    run(str(tmp_path / "a"), epochs=1)
    run(str(tmp_path / "b"), epochs=1)
    host = Host.from_model(tiny_model("llama"), name="tiny-llama")
    prompt = torch.tensor([[5, 8, 11, 14]])
    texts = []
    for name in ("a", "b"):
        with torch.no_grad(), inject(host, load_irm(tmp_path / name / "best", host)):
            texts.append(host.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, pad_token_id=0))
    with torch.no_grad():
        base = host.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(texts[0], texts[1])
    assert not torch.equal(texts[0], base), "the trained IRM should change the greedy continuation"


@pytest.mark.slow
def test_precision_check_trains_a_float32_twin_and_compares(tmp_path, monkeypatch):
    from irmlib.data import load_alignment
    from irmlib.host import load_host
    from irmlib.profile import load_profile
    from irmlib.train import precision_check

    host, rows = load_host("embedded", device="cpu"), load_alignment()
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))  # the runs go to tmp_path/runs
    profile = load_profile("smoke", precision="bfloat16", max_steps=2, injected_layers=[0, 29], track_every=1)
    table = precision_check(host, profile, rows, ("anger-seed0",))
    row = table.loc["anger-seed0"]
    assert row["precision"] != row["float32 precision"] and "float32" in row["float32 precision"]
    assert row.relative_difference == pytest.approx(abs(row.best_val_loss - row["best_val_loss float32"]) / row["best_val_loss float32"])
    assert isinstance(row.dominant_index, int) and isinstance(row["dominant_index float32"], int)
    assert (tmp_path / "runs" / "smoke" / "irm" / "anger-seed0-float32" / "done.json").exists()
    assert precision_check(host, load_profile("smoke", precision="float32"), rows, ("anger-seed0",)).empty


def test_activation_checkpointing_recomputes_the_layers_with_the_same_gradients(tiny_host):
    from irmlib.host import Host
    from irmlib.inject import Injection
    from irmlib.objective import lm_loss
    from irmlib.train import host_checkpointing

    from conftest import tiny_model

    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(tiny_host, init="paper"))
    input_ids = torch.randint(3, 97, (2, 12))
    mask = torch.ones_like(input_ids)
    calls = {"n": 0}
    tiny_host.attention(2).register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))

    def gradients(checkpointing: bool) -> list[torch.Tensor]:
        irm.zero_grad(set_to_none=True)
        injection = Injection(tiny_host, irm)
        try:
            with host_checkpointing(tiny_host, checkpointing):
                lm_loss(tiny_host, input_ids, mask, input_ids).backward()
        finally:
            injection.remove()
        return [p.grad.clone() for p in irm.parameters()]

    plain = gradients(False)
    assert calls["n"] == 1
    checkpointed = gradients(True)
    assert calls["n"] == 3  # forward, then the backward's replay of the layer
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)
    assert not any(layer.training for layer in tiny_host.layers)  # back in eval mode afterwards

    with_dropout = Host.from_model(tiny_model("llama", attention_dropout=0.1), name="tiny-llama-dropout")
    with pytest.raises(ValueError, match="needs a host without dropout.*attention_dropout"):
        with host_checkpointing(with_dropout, True):
            pass


@pytest.mark.slow
def test_train_command_trains_every_run_of_a_profile(tmp_path, monkeypatch, capsys):
    from irmlib.train import main

    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    (tmp_path / "data").symlink_to(Path(__file__).parent.parent / "data")
    main(["--profile", "smoke"])
    printed = capsys.readouterr().out
    assert "anger-seed0: validation loss" in printed and "sadness-seed0: validation loss" in printed
    assert all((tmp_path / "runs" / "smoke" / "irm" / name / "done.json").exists() for name in ("anger-seed0", "sadness-seed0"))


def test_train_command_starts_accelerate_launch_for_several_gpus(monkeypatch):
    from irmlib import train

    started = {}
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def execv(path, argv):
        started["argv"] = argv
        raise SystemExit(0)

    monkeypatch.setattr("os.execv", execv)
    with pytest.raises(SystemExit):
        train.main(["--profile", "paper", "--gpus", "2"])
    assert started["argv"] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "-m", "irmlib.train", "--profile", "paper"]


FRAGMENTED_HEAP = """
from irmlib.files import release_freed_memory
def rss_mb():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
blocks = [bytearray(64 * 1024) for _ in range(8000)]  # 500 MB in pieces below glibc's mmap threshold
for block in blocks:
    block[::4096] = b"x" * len(block[::4096])
del blocks[:-1]  # the last piece pins the top of the heap, so free() alone cannot shrink it
before = rss_mb()
print(before, rss_mb() if release_freed_memory() else None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_freed_memory_returns_a_fragmented_heap_to_the_system():
    result = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    before, after = map(int, result.stdout.split())
    assert before - after > 300, f"RSS {before} MB -> {after} MB"


def test_the_irm_optimizer_is_fused_adam_with_the_same_updates():
    from irmlib.train import irm_optimizer

    torch.manual_seed(0)
    fused_irm = IRM(IRMConfig(hidden_size=16, n_layers=3, init="paper"))
    plain_irm = IRM(IRMConfig(hidden_size=16, n_layers=3, init="paper"))
    plain_irm.load_state_dict(fused_irm.state_dict())
    start = [p.detach().clone() for p in fused_irm.parameters()]
    fused, plain = irm_optimizer(fused_irm, lr=1e-2), torch.optim.Adam(plain_irm.parameters(), lr=1e-2, foreach=False)
    assert fused.defaults["fused"]
    features = torch.randn(2, 5, 16)
    for _ in range(3):
        for irm, optimizer in ((fused_irm, fused), (plain_irm, plain)):
            optimizer.zero_grad()
            irm(features).square().mean().backward()
            optimizer.step()
    for a, b in zip(fused_irm.parameters(), plain_irm.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(fused_irm.parameters(), start))  # every weight moved
