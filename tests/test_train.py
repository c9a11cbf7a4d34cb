"""Training: only the IRM learns, padding never counts, runs are deterministic and resume exactly."""

from __future__ import annotations

import csv
import json
import os
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
from irmlib.train import TrainConfig, TrainingDiverged, lr_factor, train_irm
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
    assert len(history) == summary["steps"] == 18 and summary["epochs"] == 3.0
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


def test_done_json_counts_fractional_epochs(tmp_path):
    """24 rows in batches of 4 are 6 steps an epoch: a run stopped after 4 steps trained 0.67 of one."""
    summary = run(str(tmp_path / "part"), steps=4, epochs=2)
    done = json.loads((tmp_path / "part" / "done.json").read_text())
    assert summary["steps"] == done["steps"] == 4
    assert summary["epochs"] == done["epochs"] == 0.67 and done["stopped"] == "max_steps"


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


@pytest.mark.parametrize("field,value,message", [("batch_size", 0, "expected a whole number from 1 to 2\\*\\*63 - 1, got 0"),
                                                 ("max_length", -5, "expected a whole number from 1 to 2\\*\\*63 - 1, got -5"),
                                                 ("epochs", 0, "expected a whole number from 1 to 2\\*\\*63 - 1, got 0"),
                                                 ("max_steps", -1, "expected a whole number from 1 to 2\\*\\*63 - 1 or null, got -1"),
                                                 ("lr", 10**400, "expected a finite number, got an integer too large for a float")],
                         ids=["batch_size", "max_length", "epochs", "max_steps", "lr"])
def test_out_of_range_values_name_the_field_and_its_range(field, value, message):
    with pytest.raises(ValueError, match=rf"train\.{field}: {message}"):
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
    assert '"steps": 6' in summary and '"epochs": 2.0' in summary  # 24 rows, batch 4, 2 processes: 3 steps per epoch
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


# ----- stable training: warmup, decay, clipping -----

def test_the_schedule_warms_up_and_decays_as_configured():
    warm = TrainConfig(lr=1.0, warmup_steps=4, lr_gamma=0.5)
    assert [lr_factor(warm, s, 10) for s in (0, 1, 3, 9, 10, 25)] == [0.25, 0.5, 1.0, 1.0, 0.5, 0.25]
    cosine = TrainConfig(epochs=1, max_steps=11, decay="cosine", decay_floor=0.1)
    assert lr_factor(cosine, 0, 100) == 1.0 and lr_factor(cosine, 10, 100) == pytest.approx(0.1)
    assert lr_factor(cosine, 5, 100) == pytest.approx(0.55) and lr_factor(cosine, 50, 100) == pytest.approx(0.1)
    linear = TrainConfig(epochs=2, decay="linear", warmup_steps=2)  # 2 epochs of 6 steps: 12 in all
    assert lr_factor(linear, 0, 6) == 0.5 and lr_factor(linear, 1, 6) == 1.0 and lr_factor(linear, 11, 6) == 0.0
    assert lr_factor(linear, 6, 6) == pytest.approx(1 - 4 / 9)  # 4 of the 9 steps from the warmup's end to the last
    for bad in ({"decay": "exp"}, {"warmup_steps": -1}, {"decay_floor": 1.5}, {"clip_grad_norm": 0.0}):
        with pytest.raises(ValueError, match=f"train.{next(iter(bad))}"):
            TrainConfig(**bad)


def test_training_follows_the_schedule(tmp_path):
    run(str(tmp_path / "run"), epochs=2, warmup_steps=3, decay="cosine", decay_floor=0.2)
    with open(tmp_path / "run" / "history.csv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    config = TrainConfig(epochs=2, lr=1e-3, warmup_steps=3, decay="cosine", decay_floor=0.2)
    assert len(lrs) == 12 and lrs == pytest.approx([1e-3 * lr_factor(config, step, 6) for step in range(12)])
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[-1] == pytest.approx(2e-4)


def test_clipping_bounds_the_gradient_adam_sees(tiny_host):
    from irmlib.objective import resolve_objective
    from irmlib.precision import choose_precision
    from irmlib.train import irm_optimizer, train_step

    batch = make_collate(0)(tiny_rows(4, 0))
    norms, recorded = {}, {}
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        irm = IRM(IRMConfig.for_host(tiny_host, init="torch"))
        optimizer = irm_optimizer(irm, 1e-3)
        with inject(tiny_host, irm) as injection:
            recorded[clip] = train_step(tiny_host, injection, optimizer, batch, resolve_objective("fixed"),
                                        choose_precision("cpu", "float32"), clip_grad_norm=clip)["grad_norm"]
        norms[clip] = float(torch.nn.utils.get_total_norm([p.grad for p in irm.parameters()]))
    assert norms[None] > 1e-2 and norms[1e-3] == pytest.approx(1e-3, rel=1e-3)
    # The recorded norm is the gradient's own, before clipping, with or without it.
    assert recorded[None] == pytest.approx(norms[None]) and recorded[1e-3] == pytest.approx(norms[None])


def test_a_killed_run_resumes_its_schedule_bit_exactly(tmp_path, monkeypatch):
    """Warmup, cosine decay and clipping: killed at its second checkpoint, resumed, the run ends
    with the weights and rates of one that was never stopped."""
    from conftest import Killed, kill_on_call

    schedule = {"warmup_steps": 3, "decay": "cosine", "decay_floor": 0.1, "clip_grad_norm": 0.5}
    run(str(tmp_path / "whole"), epochs=2, **schedule)
    kill_on_call(monkeypatch, torch, "save", nth=2)
    with pytest.raises(Killed):
        run(str(tmp_path / "killed"), epochs=2, **schedule)
    monkeypatch.undo()
    run(str(tmp_path / "killed"), epochs=2, **schedule)
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "killed"))
    state = torch.load(tmp_path / "killed" / "last" / "trainer_state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 12
    with open(tmp_path / "whole" / "history.csv") as a, open(tmp_path / "killed" / "history.csv") as b:
        assert [r["lr"] for r in csv.DictReader(a)] == [r["lr"] for r in csv.DictReader(b)]
