"""Shared fixtures: tiny random hosts built from configs (no downloads), a network guard, a simulated kill."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "netguard"))
from netguard import block_network, unblock_network  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Fail any connection that leaves this machine: tests must run offline."""
    block_network()
    yield
    if os.environ.get("IRM_BLOCK_NETWORK") != "1":
        unblock_network()


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A small random causal LM of the given family, in fp32, eval mode."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    torch.manual_seed(seed)
    if model_type in ("llama", "mistral", "qwen2"):
        config_class = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[model_type]
        config = config_class(**{
            "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **overrides,
        })
    elif model_type == "gpt2":
        config = GPT2Config(vocab_size=97, n_embd=32, n_layer=4, n_head=4, n_positions=128,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0, **overrides)
    elif model_type == "gpt_neox":
        config = GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                               num_attention_heads=4, max_position_embeddings=128,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0, **overrides)
    else:
        raise ValueError(model_type)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


class Killed(BaseException):
    """Stands for SIGKILL at one point of a write (a BaseException, so no `except Exception` stops it)."""


def kill_on_call(monkeypatch, owner, name: str, nth: int, when=lambda *args: True) -> None:
    """Make the `nth` call of `owner.name` whose arguments satisfy `when` raise Killed instead of running."""
    original, calls = getattr(owner, name), {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args):
            calls["n"] += 1
            if calls["n"] == nth:
                raise Killed(f"{name} call {nth}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


@pytest.fixture
def tiny_host():
    from irmlib.host import Host

    return Host.from_model(tiny_model("llama"), name="tiny-llama")


def copy_of_repository(destination: Path) -> Path:
    """The working tree as a fresh clone would hold it with these changes: tracked and untracked
    files that git does not ignore (so no runs/, no .venv, no figures of other runs)."""
    import shutil
    import subprocess

    root = Path(__file__).parent.parent
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = root / name
        if source.is_file():  # a file deleted in the working tree is listed but absent
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture
def clean_repository(tmp_path) -> Path:
    """A clean copy of the repository (see copy_of_repository), with no runs/."""
    copy = copy_of_repository(tmp_path / "repository")
    assert not (copy / "runs").exists()
    return copy
