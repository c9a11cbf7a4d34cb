"""The Injectable Realignment Model: a plain MLP from one hidden state to one vector per layer.

Paper (arXiv 2407.03621): Linear(d, 3d) ReLU, three Linear(3d, 3d) ReLU, Linear(3d, d * L),
reading the host's hidden state right after layer 0's attention residual add.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path, write_json
from .errors import CompanionError, RunFileError

SITES = ("post_attn", "block_out")
INITS = ("zero", "paper", "torch")
WEIGHTS_FILE = "irm.safetensors"
CONFIG_FILE = "irm.json"


class IRMShapeError(CompanionError, ValueError):
    """An IRM does not fit the host it is given."""


@dataclass(frozen=True)
class IRMConfig:
    """Plain data describing an IRM; `injected_layers=None` means every host layer."""

    hidden_size: int
    n_layers: int  # the host's decoder layer count
    injected_layers: tuple[int, ...] | None = None
    width_factor: int = 3
    n_linear: int = 5
    input_layer: int = 0  # the IRM reads the residual after this layer's attention
    site: str = "post_attn"  # post_attn: the paper's; block_out: added to a block's output
    init: str = "zero"  # zero: last layer zeroed; paper: N(0, 0.02) weights, zero biases; torch: PyTorch's default
    output_rotation_seed: int | None = None  # train the last layer in a fixed random rotation of the hidden basis

    def __post_init__(self):
        layers = tuple(range(self.n_layers)) if self.injected_layers is None else tuple(self.injected_layers)
        object.__setattr__(self, "injected_layers", layers)
        if not layers:
            raise IRMShapeError("injected_layers is empty: give at least one host layer index (or None for all).")
        bad = [i for i in layers if not 0 <= i < self.n_layers]
        if bad:
            raise IRMShapeError(
                f"injected layer(s) {bad} out of range: the host has {self.n_layers} layers, "
                f"so indices must be in 0..{self.n_layers - 1}."
            )
        if len(set(layers)) != len(layers) or list(layers) != sorted(layers):
            raise IRMShapeError(f"injected_layers {list(layers)} must be increasing and without repeats.")
        if not 0 <= self.input_layer < self.n_layers:
            raise IRMShapeError(f"input_layer {self.input_layer} out of range 0..{self.n_layers - 1}.")
        if layers[0] < self.input_layer:
            raise IRMShapeError(
                f"layer {layers[0]} runs before the IRM's input (layer {self.input_layer}): "
                f"inject only into layers >= input_layer."
            )
        if self.site not in SITES:
            raise IRMShapeError(f"site '{self.site}' unknown; choose one of {SITES}.")
        if self.init not in INITS:
            raise IRMShapeError(f"init '{self.init}' unknown; choose one of {INITS}.")
        if self.n_linear < 2 or self.width_factor < 1:
            raise IRMShapeError("an IRM needs n_linear >= 2 and width_factor >= 1.")

    @property
    def n_injected(self) -> int:
        return len(self.injected_layers)

    @classmethod
    def for_host(cls, host, **overrides) -> "IRMConfig":
        return cls(hidden_size=host.hidden_size, n_layers=host.n_layers, **overrides)


# What a profile's `irm:` section may set: every IRMConfig field but the host's shape.
IRM_FIELDS = tuple(f.name for f in fields(IRMConfig) if f.name not in ("hidden_size", "n_layers"))


class IRM(nn.Module):
    """[..., hidden] -> [..., injected_layers, hidden].

    Inits: `zero` zeroes the last layer, so the host starts unchanged; `paper` is what the paper's
    code got from the host's `post_init()` (every Linear weight N(0, 0.02), biases zero); `torch`
    keeps PyTorch's default. With `output_rotation_seed`, each layer's output vector is multiplied
    by a fixed random orthogonal matrix Q ([hidden, hidden]): the function class is unchanged, but
    the optimizer's per-coordinate steps act in the rotated basis, not in the host's.
    """

    def __init__(self, config: IRMConfig):
        super().__init__()
        self.config = config
        d, width = config.hidden_size, config.hidden_size * config.width_factor
        sizes = [d] + [width] * (config.n_linear - 1) + [d * config.n_injected]
        blocks: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            blocks.append(nn.Linear(fan_in, fan_out))
            if i < config.n_linear - 1:
                blocks.append(nn.ReLU())
        self.mlp = nn.Sequential(*blocks)
        if config.init == "paper":
            for module in self.mlp:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                    nn.init.zeros_(module.bias)
        elif config.init == "zero":
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        if config.output_rotation_seed is not None:
            generator = torch.Generator().manual_seed(config.output_rotation_seed)
            q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
            self.register_buffer("rotation", (q * torch.sign(torch.diagonal(r))).float(), persistent=False)
        else:
            self.rotation = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.mlp(hidden).unflatten(-1, (self.config.n_injected, self.config.hidden_size))
        return out if self.rotation is None else out @ self.rotation.to(out.dtype).T


def check_fits(config: IRMConfig, host) -> None:
    """Raise IRMShapeError, naming both shapes, if an IRM of `config` cannot go into `host`."""
    if (config.hidden_size, config.n_layers) != (host.hidden_size, host.n_layers):
        raise IRMShapeError(
            f"This IRM was built for a host with {config.n_layers} layers x hidden {config.hidden_size}, "
            f"but '{host.name}' has {host.n_layers} layers x hidden {host.hidden_size}. "
            f"Load the host the IRM was trained on, or train a new IRM for this host."
        )


def save_irm(irm: IRM, directory: str | Path, host_shape: dict | None = None, metadata: dict | None = None) -> Path:
    """Write `irm.safetensors` and `irm.json` (config, host shape, metadata) atomically."""
    directory = Path(directory)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in irm.state_dict().items()}, str(tmp))
    write_json(directory / CONFIG_FILE, {"config": asdict(irm.config), "host": host_shape or {}, "metadata": metadata or {}})
    return directory


def _unreadable(path: Path, why: str) -> RunFileError:
    return RunFileError(f"{path}: {why}. It was not written by this project or is damaged: delete the run directory "
                        f"({path.parent.parent}) and retrain it, or restore the file from where the run came from.")


def read_irm_record(directory: str | Path) -> dict:
    """The JSON record of a saved IRM: config, host shape, metadata. RunFileError, naming the file,
    for one that is not valid JSON or whose config has fields IRMConfig does not know."""
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"No IRM checkpoint at {directory}: {CONFIG_FILE} is missing.")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _unreadable(path, f"not valid JSON ({err})") from None
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict):
        raise _unreadable(path, "no 'config' mapping")
    unknown = sorted(set(config) - {f.name for f in fields(IRMConfig)})
    if unknown:
        raise _unreadable(path, f"unknown IRM config field(s) {unknown}")
    return record


def load_irm(directory: str | Path, host=None, device: str | torch.device = "cpu") -> IRM:
    """Load a saved IRM; with `host`, refuse one built for a host of another shape (IRMShapeError).
    Weights that are not a readable safetensors file, or do not match `irm.json`'s shapes, raise
    RunFileError naming the file."""
    record = read_irm_record(directory)
    try:
        config = IRMConfig(**{**record["config"], "injected_layers": tuple(record["config"]["injected_layers"])})
    except (TypeError, ValueError) as err:
        raise _unreadable(Path(directory) / CONFIG_FILE, f"not a valid IRM config ({err})") from None
    if host is not None:
        check_fits(config, host)
    irm = IRM(config)
    weights = Path(directory) / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise _unreadable(weights, f"not a readable safetensors file ({err})") from None
    try:
        irm.load_state_dict(state)
    except RuntimeError as err:
        raise _unreadable(weights, f"its tensors do not match the shapes in {CONFIG_FILE} ({str(err).splitlines()[0]})") from None
    return irm.to(device)
