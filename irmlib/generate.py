"""Generation from the host, with or without an IRM, optionally capturing the IRM outputs."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .errors import RunFileError
from .host import Host
from .inject import Injection, inject
from .prompts import encode_prompts, format_prompt, left_padding


@dataclass
class Generation:
    """One completion. irm_outputs: [tokens, injected_layers, hidden] for the prompt tokens and
    every generated token fed back to the host (the last generated token is never fed back)."""

    question: str
    text: str
    new_tokens: int
    irm_outputs: torch.Tensor | None = None
    prompt_tokens: int = 0


def _generated_mask(new_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[batch, new] bool: generated tokens up to and including the first EOS."""
    is_eos = new_ids == eos_id
    return (is_eos.cumsum(dim=1) - is_eos.long()) == 0


@torch.inference_mode()
def generate(host: Host, questions: list[str], injection: Injection | None = None, prompt_format: str = "plain",
             max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 0.9, top_p: float = 0.7,
             seed: int = 0, batch_size: int = 8, capture: bool = False, capture_dtype: torch.dtype = torch.float16,
             min_new_tokens: int = 0) -> list[Generation]:
    """Complete each question (left-padded batches, KV cache). The IRM is whatever `injection`
    is set to; with `capture`, each Generation carries its IRM outputs. `min_new_tokens` forbids
    an earlier end (benchmarks use it for a fixed length)."""
    if capture and injection is None:
        raise ValueError("capture=True needs an injection: there are no IRM outputs without an IRM.")
    tokenizer = host.tokenizer
    results: list[Generation] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        prompts = [format_prompt(tokenizer, q, prompt_format) for q in chunk]
        with left_padding(tokenizer):  # every prompt ends in the last column, where generation appends
            encoded = encode_prompts(tokenizer, prompts, prompt_format, return_tensors="pt", padding=True).to(host.device)
        torch.manual_seed(seed + start)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
        with injection.capturing(capture_dtype) if capture else nullcontext() as captured:
            sequences = host.model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                            eos_token_id=tokenizer.eos_token_id, top_k=None, min_new_tokens=min_new_tokens,
                                            **sampling)
        prompt_len = encoded["input_ids"].shape[1]
        new_ids = sequences[:, prompt_len:]
        keep_new = _generated_mask(new_ids, tokenizer.eos_token_id)
        per_sequence = None
        if capture:
            token_mask = torch.cat([encoded["attention_mask"].bool(), keep_new[:, :-1]], dim=1)
            per_sequence = captured.per_sequence(token_mask.cpu())
        for i, question in enumerate(chunk):
            ids = new_ids[i][keep_new[i]]
            results.append(Generation(
                question=question,
                text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
                new_tokens=int(keep_new[i].sum()),
                irm_outputs=per_sequence[i] if per_sequence is not None else None,
                prompt_tokens=int(encoded["attention_mask"][i].sum()),
            ))
    return results


# Sample prompts from the paper (arXiv 2407.03621).
PAPER_PROMPTS = (
    "In which decade did Beyonce become famous?",
    "In what device are small motors commonly found?",
    "What do Elon Musk and Mark Zuckerberg have in common?",
    "How many apples can fit in a basket?",
    "What color is a cazoo?",
)


@dataclass
class CapturedOutputs:
    """IRM outputs of generations, prompt and generated tokens kept apart: per question one
    [tokens, injected_layers, hidden] tensor whose first `prompt_tokens[i]` rows are the prompt's,
    and the greedy tokens generated at most after each prompt (None: not recorded)."""

    irm_outputs: list[torch.Tensor]
    prompt_tokens: list[int]
    new_tokens: int | None = None

    def part(self, which: str = "all") -> list[torch.Tensor]:
        """"all" tokens, the "prompt" tokens or the "generated" ones of every question."""
        if which == "all":
            return self.irm_outputs
        if which == "prompt":
            return [t[:n] for t, n in zip(self.irm_outputs, self.prompt_tokens)]
        if which == "generated":
            return [t[n:] for t, n in zip(self.irm_outputs, self.prompt_tokens)]
        raise ValueError(f"part must be 'all', 'prompt' or 'generated', got '{which}'.")

    def save(self, path) -> int:
        """One safetensors file, written atomically, the prompt lengths and new_tokens in its metadata;
        returns its size in bytes."""
        with atomic_path(path) as tmp:
            save_file({f"seq{i:05d}": t.contiguous() for i, t in enumerate(self.irm_outputs)}, str(tmp),
                      metadata={"prompt_tokens": json.dumps(self.prompt_tokens), "new_tokens": json.dumps(self.new_tokens)})
        return path.stat().st_size

    @classmethod
    def load(cls, path) -> "CapturedOutputs":
        """The captures saved at `path`; RunFileError, naming the file, where it is damaged."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                prompt_tokens = json.loads(metadata.get("prompt_tokens", "[]"))
                new_tokens = json.loads(metadata.get("new_tokens", "null"))
                outputs = [handle.get_tensor(k) for k in sorted(handle.keys())]
        except (SafetensorError, OSError, json.JSONDecodeError) as err:
            raise RunFileError(f"{path}: not readable as captured IRM outputs ({err}). Delete it: the notebook that needs it "
                               f"captures it again.") from None
        if len(prompt_tokens) != len(outputs):
            raise RunFileError(f"{path}: {len(outputs)} captured sequences but {len(prompt_tokens)} prompt lengths. Delete it: "
                               f"the notebook that needs it captures it again.")
        return cls(outputs, prompt_tokens, new_tokens)


def capture_irm_outputs(host: Host, irm, questions: list[str], prompt_format: str = "plain", new_tokens: int = 10,
                        batch_size: int = 8, masked_indices: tuple[int, ...] = ()) -> CapturedOutputs:
    """The IRM outputs for each question's prompt tokens and its first `new_tokens` greedy
    tokens (the paper averaged over both): one [tokens, injected_layers, hidden] fp16 tensor per
    question, with its prompt length. `masked_indices` are zeroed in what is injected and captured."""
    with inject(host, irm, masked_indices=masked_indices) as injection:
        generations = generate(host, questions, injection, prompt_format=prompt_format, max_new_tokens=new_tokens,
                               batch_size=batch_size, capture=True)
    return CapturedOutputs([g.irm_outputs for g in generations], [g.prompt_tokens for g in generations], new_tokens)


def load_or_capture(host: Host, irm, questions: list[str], prompt_format: str, path, new_tokens: int = 10) -> CapturedOutputs:
    """The IRM outputs saved at `path` (notebook 04 writes them) if they were captured with
    `new_tokens`, else captured as 04 does and saved there, so a notebook that reads 04's captures
    also runs alone."""
    path = Path(path)
    if path.exists():
        saved = CapturedOutputs.load(path)
        if saved.new_tokens == new_tokens:
            return saved
    captured = capture_irm_outputs(host, irm, questions, prompt_format, new_tokens=new_tokens)
    captured.save(path)
    return captured
