"""Injection of IRM outputs into a frozen host through forward hooks (no copied modelling code).

For input layer i (the paper: 0) the IRM reads `h_i + attn_i(h_i)`, the residual stream right
after layer i's attention residual add, and returns one vector per injected layer. At site
`post_attn` (the paper's) each vector is added to its layer's attention output, which is
exactly the same as adding it to the residual right after the attention add, before the MLP.
At site `block_out` it is added to the decoder block's output instead.

    with inject(host, irm, scale=0.5, masked_indices=[507]) as injection, injection.capturing() as capture:
        logits = host.model(input_ids).logits
    irm_outputs = capture.stacked()  # [batch, tokens, injected_layers, hidden]

This is the only module that reads or rewrites a decoder layer's hidden states: `layer_input`,
`layer_output` and `replace_layer_output` are the one hook layer every other reader (the IRM's
inputs, the host's residual stream, the LM-head nudge) goes through.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from .host import Host
from .irm import IRM, check_fits


class Capture:
    """IRM outputs of every forward while capturing: one [batch, new_tokens, injected_layers, hidden]
    tensor per forward (the prompt, then one per generated token with a KV cache)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.steps: list[torch.Tensor] = []

    def add(self, vectors: torch.Tensor) -> None:
        self.steps.append(vectors.detach().to("cpu", self.dtype))

    def stacked(self) -> torch.Tensor:
        """[batch, tokens, injected_layers, hidden]: all forwards joined along tokens."""
        if not self.steps:
            raise RuntimeError("Nothing was captured: run the host inside the capturing block.")
        return torch.cat(self.steps, dim=1)

    def per_sequence(self, token_mask: torch.Tensor) -> list[torch.Tensor]:
        """One [tokens, injected_layers, hidden] tensor per sequence, keeping positions where
        `token_mask` ([batch, tokens], bool) is true (drops padding)."""
        stacked = self.stacked()
        if token_mask.shape != stacked.shape[:2]:
            raise ValueError(f"token_mask has shape {tuple(token_mask.shape)}, captured tokens {tuple(stacked.shape[:2])}.")
        return [seq[keep.bool().cpu()] for seq, keep in zip(stacked, token_mask)]


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states [batch, tokens, hidden] a decoder layer (or its attention) is called with,
    as a forward pre-hook registered `with_kwargs=True` sees them."""
    return args[0] if args else kwargs["hidden_states"]


def layer_output(output) -> torch.Tensor:
    """The hidden states [batch, tokens, hidden] of a decoder layer's or attention module's output:
    a tensor, or a tuple whose first item is one (depending on the family and transformers' version)."""
    return output[0] if isinstance(output, tuple) else output


def replace_layer_output(output, hidden: torch.Tensor):
    """`output` with its hidden states replaced by `hidden` (cast to their dtype), the rest kept:
    what a forward hook returns to change a module's output."""
    if isinstance(output, tuple):
        return (hidden.to(output[0].dtype),) + output[1:]
    return hidden.to(output.dtype)


class Injection:
    """Hooks that run an IRM inside a host. Settings can change between forwards."""

    def __init__(self, host: Host, irm: IRM, scale: float = 1.0, masked_indices: Sequence[int] = (), active: bool = True,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        # Under DDP `irm` is a wrapper: call it for the forward, read the config from inside.
        config = getattr(irm, "module", irm).config
        check_fits(config, host)
        self.config = config
        if config.site == "post_attn" and not host.family.sequential_residual:
            raise ValueError(
                f"Host '{host.name}' adds attention and MLP outputs in parallel, so there is no residual "
                f"'after attention, before the MLP': use site='block_out' for this host."
            )
        self.host, self.irm = host, irm
        self.active = active
        self.scale = scale
        self.masked_indices = tuple(masked_indices)
        # Any other change to the IRM's output [batch, tokens, injected_layers, hidden] before it is
        # added (irmlib.index_effect keeps one index only, or moves its write), after scale and mask.
        self.transform = transform
        self.capture: Capture | None = None  # the latest capture, kept after its block ends
        self._capturing = False
        self._input_residual: torch.Tensor | None = None
        self.vectors: torch.Tensor | None = None  # the latest forward's IRM output, [batch, tokens, injected_layers, hidden]
        self._per_layer: tuple[torch.Tensor, ...] = ()
        self._handles = [
            host.layers[config.input_layer].register_forward_pre_hook(self._remember_input, with_kwargs=True),
            host.attention(config.input_layer).register_forward_hook(self._run_irm),
        ]
        for slot, layer in enumerate(config.injected_layers):
            module = host.attention(layer) if config.site == "post_attn" else host.layers[layer]
            self._handles.append(module.register_forward_hook(self._adder(slot)))

    @property
    def masked_indices(self) -> tuple[int, ...]:
        return self._masked_indices

    @masked_indices.setter
    def masked_indices(self, indices: Sequence[int]) -> None:
        d = self.config.hidden_size
        bad = [i for i in indices if not 0 <= i < d]
        if bad:
            raise ValueError(f"masked indices {bad} out of range 0..{d - 1} (the host's hidden size is {d}).")
        self._masked_indices = tuple(indices)
        self._keep = None  # the 0/1 mask for these indices, built on first use (see _keep_mask)

    def _remember_input(self, module, args, kwargs):
        if self.active:
            self._input_residual = layer_input(args, kwargs)

    def _run_irm(self, module, args, output):
        if not self.active:
            return None
        attn_out = layer_output(output)
        # Kept, not cleared: under activation checkpointing the backward pass replays this hook
        # (it sits inside the layer's forward) but not the layer's pre-hook that set it.
        residual = self._input_residual + attn_out
        param = next(self.irm.parameters())
        vectors = self.irm(residual.to(param.dtype))
        if self.scale != 1.0:
            vectors = vectors * self.scale
        if self._masked_indices:
            vectors = vectors * self._keep_mask(vectors)
        if self.transform is not None:
            vectors = self.transform(vectors)
        self.vectors = vectors
        # One unbind, not a slice per layer: a slice's backward zero-fills the whole tensor each time.
        self._per_layer = vectors.unbind(dim=2)
        if self._capturing:
            self.capture.add(vectors)
        return None

    def _keep_mask(self, vectors: torch.Tensor) -> torch.Tensor:
        """[hidden] ones with zeros at the masked indices, in `vectors`' dtype and device. Built once
        per setting (not per forward: with a KV cache that is once per generated token); rebuilt
        when the indices change or the IRM's output dtype does (e.g. under autocast), and when one
        built under inference mode (generation) would be used where autograd must save it (training)."""
        keep = self._keep
        if (keep is None or keep.dtype != vectors.dtype or keep.device != vectors.device
                or (keep.is_inference() and not torch.is_inference_mode_enabled())):
            keep = torch.ones(vectors.shape[-1], dtype=vectors.dtype, device=vectors.device)
            keep[list(self._masked_indices)] = 0
            self._keep = keep
        return keep

    def _adder(self, slot: int):
        def hook(module, args, output):
            if not self.active:
                return None
            hidden = layer_output(output)
            return replace_layer_output(output, hidden + self._per_layer[slot].to(hidden.dtype))

        return hook

    @contextmanager
    def capturing(self, dtype: torch.dtype = torch.float32) -> Iterator[Capture]:
        """Record the injected vectors of every forward inside the block."""
        self.capture = Capture(dtype)
        self._capturing = True
        try:
            yield self.capture
        finally:
            self._capturing = False

    @contextmanager
    def settings(self, active: bool | None = None, scale: float | None = None, masked_indices: Sequence[int] | None = None):
        """Temporarily switch the IRM on/off, rescale it, or mask hidden indices of its output."""
        saved = (self.active, self.scale, self.masked_indices)
        try:
            if active is not None:
                self.active = active
            if scale is not None:
                self.scale = scale
            if masked_indices is not None:
                self.masked_indices = masked_indices
            yield self
        finally:
            self.active, self.scale, self.masked_indices = saved

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.vectors, self._per_layer, self._input_residual = None, (), None


@contextmanager
def inject(host: Host, irm: IRM, scale: float = 1.0, masked_indices: Sequence[int] = (), active: bool = True,
           transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[Injection]:
    """Run `irm` inside `host` for the duration of the block; hooks are removed on exit."""
    injection = Injection(host, irm, scale=scale, masked_indices=masked_indices, active=active, transform=transform)
    try:
        yield injection
    finally:
        injection.remove()
