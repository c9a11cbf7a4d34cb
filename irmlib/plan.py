"""Memory and time plan of a profile's IRM training on GPUs: `./reproduce.sh plan [--profile P] [--gpus N]`.

Estimates from shapes and published peak rates, nothing measured. Units: bytes (printed in
GB = 1e9 bytes), FLOPs, hours. The plan covers one training process per GPU as irmlib.train runs
it: the host frozen in bf16 (fp16 on a T4, the same size), the IRM, its gradients and Adam's two
moments in fp32, the batch per GPU; under DDP every GPU holds all of it.

Activations kept for the backward pass, per token (b = 2 bytes, the host's dtype): the host is
frozen, but the loss's gradient must flow back through every layer above the injection sites to
reach the IRM, so each decoder layer keeps what its input-gradient backward needs:

    host, per layer:  (6 h + 2 kv + 4 ff + heads x s) x b
        attention: the norm's input and output, Q, K, V and the attention output (4 h + 2 kv,
        kv = h x kv_heads / heads) and the softmax probabilities (heads x s, eager attention);
        MLP: the norm's input and output (2 h), gate, up, SiLU(gate) and their product (4 ff)
    logits:           V x (b + 8)     in the host's dtype, then in fp32 for the loss, and its fp32 gradient
    IRM:              (h + 2 (n_linear - 1) w + 2 h L_inj) x 4   (x 2 under bf16 autocast)
        its input, each hidden layer's output before and after the ReLU (w = width x h), and its
        output with that output's gradient (h per injected layer each)

tests/test_plan.py holds the host's per-layer term against the tensors PyTorch saves for one
transformers Llama layer of the embedded host's shape (8% more than the estimate). With
activation checkpointing of the host's layers, each layer keeps only its input (h x b per layer)
and one layer's activations at a time are recomputed in the backward pass. Mixed precision
(Accelerate's bf16 autocast) keeps the IRM's fp32 weights, gradients and Adam state and adds the
bf16 copies of its weights that autocast makes, so it buys speed, not memory.

FLOPs per token: the host's forward 2 P and its input-gradient backward 2 P (one matrix product per
weight instead of two), the IRM's forward 2 P_irm and backward 4 P_irm (inputs and weights);
P counts the matrices that multiply every token (decoder layers and LM head, not the embedding
lookup); attention scores (4 s h per layer and token: at s = 128, 0.5% of a Llama-2-7b layer's
products, 4% of the embedded host's) are left out.
Checkpointing adds one more host forward. The host's products run at the GPU's bf16 (T4: fp16)
dense peak; the IRM's fp32 products at the plain fp32 peak, without TF32, as irmlib trains
(PyTorch's default float32 matmul precision, "highest"), or at the bf16 peak with mixed precision;
all at UTILISATION of the peak. The paper's code set torch.set_float32_matmul_precision("medium"),
under which CUDA runs fp32 matrix products as TF32 on GPUs that have it (Ampere and later), so the
plan also times the IRM's fp32 products at the dense TF32 peak (TF32_NOTE; a T4 has no TF32 and
keeps its fp32 time). Tokens: every row padded to max_length (an upper bound). DDP splits the rows
over the GPUs; its gradient all-reduce is not timed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .data import DataError, profile_rows
from .irm import IRMConfig
from .profile import Profile, profile_and_gpus

GB = 1e9
UTILISATION = 0.4  # share of the dense peak reached by these products (a stated assumption, not measured)
USABLE_SHARE = 0.9  # of a GPU's memory; the CUDA context, allocator fragmentation and temporaries take the rest
HOST_BYTES = 2  # bf16 on GPUs that have it, fp16 on a T4 (irmlib.host)
FP32 = 4
ADAM_STATES = 2  # exp_avg and exp_avg_sq, fp32, per IRM parameter
# SQuAD 2.0's training questions that have an answer: the paper profile's builder rewrites each
# once per emotion (the hub's copy has no plausible answers for the rest).
SQUAD_QUESTIONS = 86_821
SPLIT_SHARES = {"train": 0.8, "validation": 0.1}  # irmlib.data.assign_split: about 80 / 10 / 10 by question


@dataclass(frozen=True)
class HostShape:
    """A Llama-style decoder (gated MLP, grouped-query attention, RMSNorm, no biases)."""

    name: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    n_heads: int
    n_kv_heads: int
    tied_embeddings: bool

    @property
    def kv_size(self) -> int:
        return self.hidden_size * self.n_kv_heads // self.n_heads

    @property
    def layer_parameters(self) -> int:
        """One decoder layer: q, o ([h, h]), k, v ([h, kv]), gate, up, down ([h, ff]), two norms."""
        h = self.hidden_size
        return 2 * h * h + 2 * h * self.kv_size + 3 * h * self.intermediate_size + 2 * h

    @property
    def parameters(self) -> int:
        """All parameters: layers, final norm, embedding, and the LM head unless tied to it."""
        embedding = self.vocab_size * self.hidden_size
        head = 0 if self.tied_embeddings else embedding
        return self.n_layers * self.layer_parameters + self.hidden_size + embedding + head

    @property
    def matmul_parameters(self) -> int:
        """The weights that multiply every token in a forward pass: decoder layers and LM head."""
        return self.n_layers * self.layer_parameters + self.vocab_size * self.hidden_size


# The profiles' hosts, so that a plan needs no download (hub configs).
KNOWN_HOSTS = {
    "embedded": HostShape("SmolLM2-135M-Instruct (embedded)", 30, 576, 1536, 49152, 9, 3, True),
    "HuggingFaceTB/SmolLM2-360M-Instruct": HostShape("SmolLM2-360M-Instruct", 32, 960, 2560, 49152, 15, 5, True),
    "meta-llama/Llama-2-7b-chat-hf": HostShape("Llama-2-7b-chat", 32, 4096, 11008, 32000, 32, 32, False),
}


@dataclass(frozen=True)
class GPU:
    """A GPU's memory (GB) and dense peak rates (TFLOP/s): 16-bit (bf16; T4: fp16), fp32 without
    TF32, and TF32 (None where the GPU has no TF32)."""

    name: str
    memory_gb: float
    peak_16bit_tflops: float
    peak_fp32_tflops: float
    peak_tf32_tflops: float | None = None


# Published datasheet peaks, dense (the datasheets' TF32 figures with sparsity, halved).
GPUS = (
    GPU("T4", 16, 65, 8.1),
    GPU("L4", 24, 121, 30.3, 60),
    GPU("A100 40GB", 40, 312, 19.5, 156),
    GPU("A100 80GB", 80, 312, 19.5, 156),
    GPU("H100 SXM", 80, 989, 67, 494.5),
    GPU("H200", 141, 989, 67, 494.5),
)

# The assumption behind the IRM's fp32 time, printed with every plan.
TF32_NOTE = (
    "IRM's fp32 products at the plain fp32 peak, no TF32: PyTorch's default float32 matmul precision,",
    "which irmlib keeps. The paper's code set torch.set_float32_matmul_precision(\"medium\"), so on Ampere",
    "and later GPUs its IRM's fp32 products ran as TF32: the TF32 columns time them at the dense TF32 peak",
    "(the T4 has no TF32: its fp32 time).",
)


@dataclass(frozen=True)
class Options:
    """Training options that change memory or time: the ways to fit a smaller GPU (TrainConfig fields)."""

    mixed_precision: bool = False  # the IRM's products in bf16 under autocast, fp32 master weights (Accelerate)
    checkpointing: bool = False  # activation checkpointing of the host's decoder layers

    @property
    def label(self) -> str:
        parts = (["IRM in bf16, fp32 master weights"] if self.mixed_precision else []) + \
                (["activation checkpointing"] if self.checkpointing else [])
        return " + ".join(parts) or "as the profile runs"


@dataclass(frozen=True)
class Memory:
    """Bytes on each GPU during training."""

    host_weights: int
    irm_weights: int
    irm_gradients: int
    adam_state: int
    ddp_buckets: int  # DDP's copy of the gradients it all-reduces (gradient_as_bucket_view off)
    autocast_copies: int  # bf16 copies of the IRM's weights that autocast keeps through a step
    activations: int

    @property
    def total(self) -> int:
        return (self.host_weights + self.irm_weights + self.irm_gradients + self.adam_state + self.ddp_buckets
                + self.autocast_copies + self.activations)


def host_shape(spec: str) -> HostShape:
    """The shape of a profile's host: from KNOWN_HOSTS, else from its config (a local path or a
    cached hub id; nothing is downloaded)."""
    if spec in KNOWN_HOSTS:
        return KNOWN_HOSTS[spec]
    from transformers import AutoConfig  # lazy: seconds to import, and most hosts are in KNOWN_HOSTS

    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=True)
    except OSError as err:
        raise ValueError(f"No shape for host '{spec}': it is not in irmlib.plan.KNOWN_HOSTS and its config is not on this "
                         f"machine ({err}). Download its config.json once, or add the host to KNOWN_HOSTS.") from None
    if config.model_type not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"Host '{spec}' is a '{config.model_type}' model; the plan knows Llama-style decoders "
                         f"(llama, mistral, qwen2) only.")
    return HostShape(spec, config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size,
                     config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                     bool(getattr(config, "tie_word_embeddings", False)))


def irm_parameters(hidden_size: int, n_injected: int, width_factor: int = 3, n_linear: int = 5) -> int:
    """Weights and biases of irmlib.irm.IRM: Linear(h, w), (n_linear - 2) x Linear(w, w), Linear(w, h x n_injected)."""
    width = hidden_size * width_factor
    sizes = [hidden_size] + [width] * (n_linear - 1) + [hidden_size * n_injected]
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def irm_config(profile: Profile, host: HostShape):
    """The IRMConfig the profile's `irm:` section gives on this host."""
    return IRMConfig(hidden_size=host.hidden_size, n_layers=host.n_layers, **profile.irm)


def profile_irm_parameters(profile: Profile, host: HostShape) -> int:
    irm = irm_config(profile, host)
    return irm_parameters(host.hidden_size, irm.n_injected, irm.width_factor, irm.n_linear)


def activation_bytes_per_token(host: HostShape, profile: Profile, options: Options) -> int:
    """Activations kept for the backward pass, bytes per token (formulas in the module docstring)."""
    h, s = host.hidden_size, profile.train.max_length
    layer = (6 * h + 2 * host.kv_size + 4 * host.intermediate_size + host.n_heads * s) * HOST_BYTES
    kept = host.n_layers * h * HOST_BYTES + layer if options.checkpointing else host.n_layers * layer
    logits = host.vocab_size * (HOST_BYTES + 2 * FP32)
    irm_bytes = 2 if options.mixed_precision else FP32
    shape = irm_config(profile, host)
    irm = (h + 2 * (shape.n_linear - 1) * h * shape.width_factor + 2 * h * shape.n_injected) * irm_bytes
    return kept + logits + irm


def memory(profile: Profile, host: HostShape, gpus: int = 1, options: Options = Options()) -> Memory:
    """Bytes per GPU when `gpus` GPUs train one IRM under DDP, each on a batch of profile.train.batch_size rows."""
    irm = profile_irm_parameters(profile, host)
    tokens = profile.train.batch_size * profile.train.max_length
    return Memory(host_weights=host.parameters * HOST_BYTES, irm_weights=irm * FP32, irm_gradients=irm * FP32,
                  adam_state=irm * FP32 * ADAM_STATES, ddp_buckets=irm * FP32 if gpus > 1 else 0,
                  autocast_copies=irm * 2 if options.mixed_precision else 0,
                  activations=tokens * activation_bytes_per_token(host, profile, options))


def rows_per_emotion(profile: Profile) -> tuple[int, int, str]:
    """(train rows, validation rows) of one IRM run (the largest emotion), and where the counts come from."""
    try:
        rows = profile_rows(profile)
    except DataError:
        # The paper profile's data is built by notebook 01; until then, estimate it.
        questions = profile.squad_rows or SQUAD_QUESTIONS
        return (round(questions * SPLIT_SHARES["train"]), round(questions * SPLIT_SHARES["validation"]),
                f"estimated: {questions:,} SQuAD questions x {SPLIT_SHARES['train']:.0%}/{SPLIT_SHARES['validation']:.0%} train/validation")

    def count(split: str) -> int:
        most = max(sum(r["emotion"] == e and r["split"] == split for r in rows) for e in profile.emotions)
        return min(most, profile.data_limit) if profile.data_limit else most

    return count("train"), count("validation"), "counted in the profile's data"


def epoch_flops(profile: Profile, host: HostShape, train_rows: int, val_rows: int, options: Options = Options()) -> tuple[float, float]:
    """(host FLOPs, IRM FLOPs) of one epoch of one IRM run, its one validation pass included."""
    p_host = host.matmul_parameters
    p_irm = profile_irm_parameters(profile, host)
    train_tokens, val_tokens = train_rows * profile.train.max_length, val_rows * profile.train.max_length
    host_per_token = (6 if options.checkpointing else 4) * p_host
    return (host_per_token * train_tokens + 2 * p_host * val_tokens, 6 * p_irm * train_tokens + 2 * p_irm * val_tokens)


def hours(flops: tuple[float, float], gpu: GPU, gpus: int = 1, options: Options = Options(),
          utilisation: float = UTILISATION, tf32: bool = False) -> float:
    """Hours for (host FLOPs, IRM FLOPs) on `gpus` GPUs of a kind, each at `utilisation` of its peak.
    The IRM's products run at the bf16 peak under mixed precision, else at the fp32 peak, or with
    `tf32` at the TF32 peak where the GPU has one (the paper code's float32 matmul precision)."""
    host_flops, irm_flops = flops
    if options.mixed_precision:
        irm_peak = gpu.peak_16bit_tflops
    else:
        irm_peak = gpu.peak_tf32_tflops if tf32 and gpu.peak_tf32_tflops else gpu.peak_fp32_tflops
    seconds = (host_flops / gpu.peak_16bit_tflops + irm_flops / irm_peak) / (utilisation * 1e12 * gpus)
    return seconds / 3600


def fits(total_bytes: float, gpu: GPU) -> bool:
    return total_bytes <= USABLE_SHARE * gpu.memory_gb * GB


def epochs_run(profile: Profile, train_rows: int, gpus: int) -> int:
    """Epochs one run trains at most: the profile's, fewer where max_steps ends it sooner."""
    steps_per_epoch = math.ceil(train_rows / (profile.train.batch_size * gpus))
    return profile.train.epochs if profile.train.max_steps is None else min(profile.train.epochs, math.ceil(profile.train.max_steps / steps_per_epoch))


def memory_table(parts: Memory) -> list[str]:
    rows = [("host weights (16-bit)", parts.host_weights), ("IRM weights (fp32)", parts.irm_weights),
            ("IRM gradients (fp32)", parts.irm_gradients), ("Adam state (fp32, 2 per parameter)", parts.adam_state),
            ("DDP gradient buckets (fp32)", parts.ddp_buckets), ("autocast bf16 weight copies", parts.autocast_copies),
            ("activations", parts.activations), ("total", parts.total)]
    return [f"  {label:<36} {value / GB:8.2f}" for label, value in rows if value or label == "total"]


def format_hours(value: float) -> str:
    if value * 60 < 0.5:
        return "<1 min"
    return f"{value * 60:.0f} min" if value < 1 else f"{value:.1f} h"


def gpu_table(parts: Memory, flops: tuple[float, float], runs_x_epochs: int, gpus: int, options: Options) -> list[str]:
    """One line per GPU kind: its memory, whether the plan fits, and hours where it does; where the
    IRM's products are fp32, also the hours with them at the TF32 peak (TF32_NOTE)."""
    tf32 = not options.mixed_precision
    lines = [f"  {'GPU':<11} {'memory':>7}  {'fits':<4}  {'per epoch':>9}  {'all runs':>9}"
             + (f"  {'TF32: per epoch':>15}  {'all runs':>9}" if tf32 else "")]
    for gpu in GPUS:
        line = f"  {gpu.name:<11} {gpu.memory_gb:>4g} GB  {'yes' if fits(parts.total, gpu) else 'no':<4}  "
        for at_tf32 in (False, True) if tf32 else (False,):
            per_epoch = hours(flops, gpu, gpus, options, tf32=at_tf32)
            times = (format_hours(per_epoch), format_hours(per_epoch * runs_x_epochs)) if fits(parts.total, gpu) else ("-", "-")
            line += f"{times[0]:>15}  {times[1]:>9}  " if at_tf32 else f"{times[0]:>9}  {times[1]:>9}  "
        lines.append(line.rstrip())
    return lines


def report(profile: Profile, gpus: int = 1) -> str:
    """The plan as text: memory per GPU, which GPUs it fits, hours per epoch; option rows where it does not fit every GPU."""
    host = host_shape(profile.host)
    irm_shape = irm_config(profile, host)
    injected, width_factor = irm_shape.n_injected, irm_shape.width_factor
    irm = irm_parameters(host.hidden_size, injected, width_factor)
    train_rows, val_rows, source = rows_per_emotion(profile)
    runs = len(profile.emotions) * len(profile.seeds)
    runs_x_epochs = runs * epochs_run(profile, train_rows, gpus)
    plain = Options(checkpointing=profile.train.activation_checkpointing)
    parts = memory(profile, host, gpus, plain)
    lines = [
        f"Plan for profile '{profile.name}' (estimates; GB = 1e9 bytes)",
        f"  host {host.name}: {host.n_layers} layers, hidden {host.hidden_size}, {host.parameters / 1e9:.2f}B parameters",
        f"  IRM on {injected} layers, width {width_factor}: {irm / 1e6:,.1f}M parameters "
        f"({irm / host.parameters:.0%} of the host's)",
        f"  batch {profile.train.batch_size} x {profile.train.max_length} tokens per GPU on {gpus} GPU(s) (DDP: each GPU holds all below)",
        f"  rows per epoch and run: {train_rows:,} train, {val_rows:,} validation ({source})",
        f"  runs: {runs} ({len(profile.emotions)} emotions x {len(profile.seeds)} seeds), at most {runs_x_epochs // runs} epoch(s) each",
        "",
        "Memory per GPU                            GB",
        *memory_table(parts),
    ]
    if gpus > 1:
        lines.append(f"  DDP all-reduces {parts.irm_gradients / GB:.2f} GB of IRM gradients per step (not timed)")
    lines += ["", f"Where it fits (<= {USABLE_SHARE:.0%} of a GPU's memory), and the time at {UTILISATION:.0%} of the GPU's peak",
              "(host bf16/fp16, IRM fp32; all runs: every epoch of every run, early stopping ends sooner)",
              *(f"  {line}" for line in TF32_NOTE),
              *gpu_table(parts, epoch_flops(profile, host, train_rows, val_rows, plain), runs_x_epochs, gpus, plain)]
    if all(fits(parts.total, gpu) for gpu in GPUS):
        return "\n".join(lines)
    lines += ["", "Options for smaller GPUs (estimates; activation checkpointing: `activation_checkpointing: true` in the",
              "profile's train section)"]
    for options in (Options(mixed_precision=True), Options(checkpointing=True), Options(mixed_precision=True, checkpointing=True)):
        option_parts = memory(profile, host, gpus, options)
        lines += ["", f"  {options.label}: {option_parts.total / GB:.2f} GB per GPU (activations {option_parts.activations / GB:.2f})",
                  *gpu_table(option_parts, epoch_flops(profile, host, train_rows, val_rows, options), runs_x_epochs, gpus, options)]
    lines += ["", f"  Neither option shrinks the IRM's {(parts.irm_weights + parts.irm_gradients + parts.adam_state) / GB:.1f} GB: "
                  "fp32 weights, gradients and Adam's two moments, 16 bytes per",
              "  parameter (mixed precision keeps them all and adds bf16 copies; it buys speed). 8-bit Adam or sharding the",
              "  optimizer state across GPUs (ZeRO, FSDP) would."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    profile, gpus = profile_and_gpus("./reproduce.sh plan", "Memory and time plan of a profile's IRM training on GPUs.", argv,
                                     "GPUs under DDP (accelerate launch); the batch is per GPU")
    print(report(profile, gpus))


if __name__ == "__main__":
    main()
