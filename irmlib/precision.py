"""The numeric precision per device: which dtype the host's weights get, whether the forward and
backward run under autocast, and why (recorded in each run's metadata).

The IRM's master weights, its gradients and Adam's state are float32 in every choice; so is the
loss (`lm_loss` casts the logits to float32, and autocast keeps cross-entropy in float32).

- CPU: bf16 autocast (host weights stay float32; matrix products run in bf16) only where the CPU
  reports native bf16 instructions (the `avx512_bf16` or `amx_bf16` flags, `bf16` on aarch64) AND
  a short timed probe at start-up finds a bf16 matmul clearly faster than fp32; float32 otherwise.
  The model name is never used to decide.
- CUDA: bf16 host weights where the GPU has bf16 natively (compute capability 8.0 and up:
  A100, H100, L4, RTX 30xx/40xx); elsewhere (a T4, capability 7.5, whose bf16 is only emulated)
  float16 host weights, with the IRM and the loss in float32. Untested on a GPU so far: the
  embedded host's residual stream reaches about 25,600 in magnitude (its massive activation,
  index 507), 39% of float16's largest value (65,504), so fp16's headroom is only 2.6x; a forward
  with fp16 weights on CPU kernels stayed finite (random ids, 4 x 128 tokens).

    precision = choose_precision(device)                 # or requested="float32", "bfloat16", ...
    host = load_host("embedded", device=device, dtype=precision.host_dtype)
    with autocast(precision):
        loss = lm_loss(...)                              # forward under autocast
    loss.backward()                                      # backward outside the block, as torch advises

Attention under autocast runs in float32 (`FLOAT32_ATTENTION`, set on every host by
`Host.from_model`): autocast would run the attention in bf16, and torch's CPU
flash-attention backward is slow in bf16 (on a 2-core Intel Xeon with AMX, 794 ms against 172 ms in
float32 for the embedded host's 29 attention layers at 8 x 128 tokens: the profiler tables in
benchmarks/ at commit 4654fe9); in float32 the attention also rounds less. Outside autocast
(generation, float32 runs, bf16 host weights) it is transformers' SDPA attention unchanged.

Generation never runs under autocast (irmlib.generate does not enter it; the host's dtype
decides): one token per step is bound by reading the weights, and autocast would re-cast the
frozen host's fp32 weights to bf16 at every step. On a 2-core Intel Xeon with AMX, generation
with the IRM (batch 8, 32 new tokens) took 1.43x its fp32 time under bf16 autocast.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from .errors import CompanionError

# CPU flags (as /proc/cpuinfo spells them) that mean bf16 arithmetic in hardware: AVX512-BF16
# (Intel Cooper Lake and later, AMD Zen 4 and later), AMX-BF16 (Intel Sapphire Rapids and later),
# and the Armv8.6 BF16 extension (aarch64 "Features": Graviton 3, Neoverse V1/N2).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Flags recorded with the benchmark results: what the CPU offers for bf16 and wide vectors.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8", "bf16", "sve", "asimd")
# bf16 autocast on CPU is chosen only if the probe's bf16 matmul takes less than this share of fp32's.
PROBE_THRESHOLD = 0.8
# The IRM's first layer at a training batch of 8 x 128 tokens on the embedded host (hidden 576).
PROBE_SHAPE = (1024, 576, 1728)

REQUESTS = ("auto", "float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


class PrecisionError(CompanionError, ValueError):
    """An unknown precision name, or one this device cannot run."""


@dataclass(frozen=True)
class Precision:
    """How a run computes on one device.

    host_dtype: the frozen host's weights. autocast_dtype: None, or the dtype that matrix products
    of the host's and the IRM's forward (and so their backward) run in under torch.autocast.
    """

    name: str  # e.g. "cpu-float32", "cpu-bf16-autocast", "cuda-bfloat16", "cuda-float16-host"
    device_type: str
    host_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    reason: str
    details: dict = field(default_factory=dict, compare=False)  # what the decision read: flags, probe, capability

    def as_dict(self) -> dict:
        """Plain JSON-ready data for run metadata."""
        def dtype_name(dtype):
            return None if dtype is None else str(dtype).removeprefix("torch.")

        return {"name": self.name, "device_type": self.device_type, "host_dtype": dtype_name(self.host_dtype),
                "autocast_dtype": dtype_name(self.autocast_dtype),
                "reason": self.reason, "details": dict(self.details)}


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """The first processor's model name and its flags (x86 "flags", aarch64 "Features")."""
    model, flags = None, set()
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
                if not line.strip() and model is not None and flags:
                    break  # the first processor is enough
    except OSError:
        pass
    return model, flags


def cpu_bf16_support(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """What the CPU reports about bf16: model name, the relevant flags and `native_bf16`.

    Reads /proc/cpuinfo (Linux); elsewhere the flags are unknown and `native_bf16` is False (the
    safe answer: float32). The decision rests on the flags only, never on the model name.
    """
    model, flags = _read_cpuinfo(cpuinfo_path)
    native = sorted(f for f in NATIVE_BF16_FLAGS if f in flags)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older or unusual builds
        capability = None
    return {
        "model_name": model or platform.processor() or platform.machine() or "unknown CPU",
        "machine": platform.machine(),
        "flags": sorted(f for f in RELEVANT_FLAGS if f in flags),
        "flags_known": bool(flags),
        "native_bf16_flags": native,
        "native_bf16": bool(native),
        "torch_cpu_capability": capability,  # the widest vector ISA torch's kernels use, e.g. "AVX512"
    }


def probe_cpu_bf16(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 8, budget_s: float = 0.6,
                   threads: int | None = 1) -> dict:
    """Time an fp32 matmul [m, k] @ [k, n] against the same matmul under bf16 autocast.

    One warm-up each, then up to `repeats` interleaved pairs or until `budget_s` is spent; the
    fastest of each is compared (the least disturbed by other load). Runs on `threads` threads
    (default 1, restored after): a per-core measurement of the CPU's kernels. On 2 threads of a
    machine shared with other work, every matmul waits on whichever thread was descheduled, and
    that wait, not the arithmetic, set the ratio in our tests (an AMD EPYC with avx512_bf16 at a
    load of 6 on 2 cores: 0.88-1.09 on 2 threads, 0.36-0.54 on 1 thread; 0.36 on 2 threads when
    less loaded). Returns fp32_s, bf16_s, threads and ratio = bf16_s / fp32_s (below 1: bf16 is
    faster). About 0.3-0.5 s.
    """
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)

    def fp32():
        return a @ b

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    saved_threads = torch.get_num_threads()
    best = {"fp32": float("inf"), "bf16": float("inf")}
    try:
        if threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            fp32(), bf16()
            started = time.perf_counter()
            for _ in range(max(1, repeats)):
                for name, fn in (("fp32", fp32), ("bf16", bf16)):
                    t0 = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t0)
                if time.perf_counter() - started > budget_s:
                    break
    finally:
        torch.set_num_threads(saved_threads)
    return {"shape": list(shape), "threads": threads or saved_threads, "fp32_s": best["fp32"], "bf16_s": best["bf16"],
            "ratio": best["bf16"] / best["fp32"]}


def cuda_bf16_support(device: torch.device) -> dict:
    """The GPU's name, compute capability and whether it has bf16 natively.

    `torch.cuda.is_bf16_supported()` with its default `including_emulation=True` also answers yes
    on a T4 (capability 7.5), where bf16 is emulated and slow; only the native answer counts here.
    That query is about the current device, so for another index the capability decides
    (torch's own test: major >= 8).
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if index == torch.cuda.current_device():
        try:
            native = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch without the argument
            native = major >= 8
    else:
        native = major >= 8
    return {"gpu": torch.cuda.get_device_name(index), "index": index, "capability": f"{major}.{minor}",
            "native_bf16": native, "hip": bool(getattr(torch.version, "hip", None))}


def normalise_request(requested: str) -> str:
    """A precision request by its canonical name ("bf16" -> "bfloat16"); PrecisionError for an unknown one."""
    name = ALIASES.get(str(requested).strip().lower(), str(requested).strip().lower())
    if name not in REQUESTS:
        raise PrecisionError(f"Unknown precision '{requested}'; choose one of {', '.join(REQUESTS)} "
                             f"(aliases: {', '.join(f'{k}={v}' for k, v in ALIASES.items())}).")
    return name


@functools.cache
def _choose_cpu(requested: str) -> Precision:
    """Cached: one process decides once, so two runs of one process never differ by a noisy probe."""
    support = cpu_bf16_support()
    flags = ", ".join(support["native_bf16_flags"])
    details = {"cpu": support}
    if requested == "float16":
        raise PrecisionError("float16 on CPU is not offered: CPUs have no fast float16 matrix products and the host "
                             "would lose range for nothing; choose 'float32' or 'bfloat16' (or 'auto').")
    if requested == "float32":
        return Precision("cpu-float32", "cpu", torch.float32, None, "float32 requested", details=details)
    if requested == "bfloat16":
        note = f"CPU has {flags}" if support["native_bf16"] else "CPU reports no native bf16 flag, so bf16 is emulated and likely slower"
        return Precision("cpu-bf16-autocast", "cpu", torch.float32, torch.bfloat16, f"bfloat16 requested ({note})",
                         details=details)
    # auto
    if not support["native_bf16"]:
        why = ("reports no avx512_bf16 or amx_bf16 flag" if support["flags_known"]
               else "flags could not be read (no /proc/cpuinfo)")
        return Precision("cpu-float32", "cpu", torch.float32, None,
                         f"CPU ({support['model_name']}) {why}: float32 (bf16 probe not run)", details=details)
    probe = probe_cpu_bf16()
    details["probe"] = probe
    if probe["ratio"] < PROBE_THRESHOLD:
        return Precision("cpu-bf16-autocast", "cpu", torch.float32, torch.bfloat16,
                         f"CPU has {flags}; probe: bf16 matmul {probe['ratio']:.2f}x fp32", details=details)
    return Precision("cpu-float32", "cpu", torch.float32, None,
                     f"CPU has {flags} but the probe's bf16 matmul took {probe['ratio']:.2f}x fp32 "
                     f"(bf16 needs < {PROBE_THRESHOLD}x): float32", details=details)


def _choose_cuda(device: torch.device, requested: str) -> Precision:
    if not torch.cuda.is_available():
        raise PrecisionError(f"Device '{device}' was asked for, but CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use device 'cpu'.")
    support = cuda_bf16_support(device)
    details = {"gpu": support}
    gpu = f"{support['gpu']} (capability {support['capability']})"
    if requested == "float32":
        return Precision("cuda-float32", "cuda", torch.float32, None, f"float32 requested on {gpu}", details=details)
    if requested == "float16":
        return Precision("cuda-float16-host", "cuda", torch.float16, None,
                         f"float16 requested on {gpu}: host weights fp16, IRM and loss fp32", details=details)
    if support["native_bf16"]:
        why = "bfloat16 requested" if requested == "bfloat16" else "GPU has native bf16"
        return Precision("cuda-bfloat16", "cuda", torch.bfloat16, None,
                         f"{gpu}: {why}: host weights bf16, IRM and loss fp32", details=details)
    if requested == "bfloat16":
        raise PrecisionError(f"{gpu} has no native bf16 (only emulated, and slow); choose 'float16' (host weights "
                             f"fp16, IRM and loss fp32), 'float32', or 'auto'.")
    return Precision("cuda-float16-host", "cuda", torch.float16, None,
                     f"{gpu} has no native bf16 (emulated only): host weights fp16, IRM and loss fp32", details=details)


def choose_precision(device: str | torch.device = "cpu", requested: str = "auto") -> Precision:
    """The precision for `device`: "auto" decides as the module docstring says; "float32",
    "bfloat16" (on CPU: bf16 autocast) or "float16" (CUDA only: fp16 host weights) force a choice.

    Raises PrecisionError for an unknown name or a choice the device cannot run (float16 on CPU,
    bfloat16 on a GPU without native bf16, CUDA on a machine without it).
    """
    if str(requested).strip().lower() == "auto" and os.environ.get("IRM_PRECISION"):
        requested = os.environ["IRM_PRECISION"]  # decided once for a whole pipeline run (irmlib.pipeline)
    requested = normalise_request(requested)
    device = torch.device(device)
    if device.type == "cpu":
        return _choose_cpu(requested)
    if device.type == "cuda":
        return _choose_cuda(device, requested)
    if requested in ("auto", "float32"):
        return Precision(f"{device.type}-float32", device.type, torch.float32, None,
                         f"no precision rule for device type '{device.type}': float32")
    raise PrecisionError(f"Only 'float32' (or 'auto') is offered on device type '{device.type}', not '{requested}'.")


def precision_request(precision: Precision) -> str:
    """The explicit request ("float32", "bfloat16", "float16") that gives `precision` again without
    a probe: what a resumed run asks for."""
    if precision.autocast_dtype is not None:
        return str(precision.autocast_dtype).removeprefix("torch.")
    return str(precision.host_dtype).removeprefix("torch.")


def autocast(precision: Precision, device_type: str | None = None) -> AbstractContextManager:
    """torch.autocast for `precision` (the forward pass goes inside it); a no-op when
    `precision.autocast_dtype` is None."""
    if precision.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device_type or precision.device_type, dtype=precision.autocast_dtype)


# The name under which `sdpa_float32_under_autocast` is registered with transformers.
FLOAT32_ATTENTION = "sdpa_float32_under_autocast"


def sdpa_float32_under_autocast(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on `query`, `key`, `value` [batch, heads, tokens, head_dim],
    computed in float32 under autocast (which would otherwise cast all three to its dtype: the
    rotary embedding leaves queries and keys float32, values come bf16 from their projection); the
    output [batch, tokens, heads, head_dim] is returned in autocast's dtype, as autocast's SDPA
    would return it. Outside autocast, transformers' SDPA attention unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # lazy: see below

    device_type = query.device.type
    if not torch.is_autocast_enabled(device_type):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast(device_type, enabled=False):
        output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return output.to(torch.get_autocast_dtype(device_type)), weights


def attention_in_float32_under_autocast(model) -> None:
    """Switch a transformers model that uses SDPA attention to `FLOAT32_ATTENTION` (no change
    outside autocast); models with another attention implementation are left as they are."""
    # Lazy: transformers takes seconds to import; this module is read by the pipeline and the
    # planner, which load no model.
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        AttentionInterface.register(FLOAT32_ATTENTION, sdpa_float32_under_autocast)
        # transformers builds no attention mask at all (padding unmasked) for an attention name
        # without a mask function: this one takes SDPA's masks.
        AttentionMaskInterface.register(FLOAT32_ATTENTION, sdpa_mask)
        model.set_attn_implementation(FLOAT32_ATTENTION)
