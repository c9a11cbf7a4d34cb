"""Benchmarks against the project's own floors, each ratio measured in one run on one machine.

    ./reproduce.sh bench          (or: python benchmarks/run.py [--device cuda] [--repeats N])

Writes benchmarks/results.json: machine, versions, and for each benchmark the measured times,
the ratio and its target. Targets are for the cpu profile on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from irmlib.files import repo_root, write_json
from irmlib.generate import generate, save_capture
from irmlib.host import load_host
from irmlib.inject import inject
from irmlib.irm import IRM, IRMConfig
from irmlib.train import lm_loss

RESULTS = Path(__file__).parent / "results.json"
QUESTIONS = ["What is the capital of France?", "Why is the sky blue?", "Who wrote Hamlet?", "How do bees make honey?",
             "What is the boiling point of water?", "Name the largest planet.", "When did the Berlin Wall fall?",
             "What does DNA stand for?"]


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_training(host, repeats: int) -> dict:
    """IRM train step (all layers) over the host's forward at 8 x 128 tokens, and over the floor:
    forward + input-only backward of the host, plus the IRM's own forward and backward."""
    device = host.device
    ids = torch.randint(100, host.vocab_size - 100, (8, 128), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    irm = IRM(IRMConfig.for_host(host, init="paper")).to(device)
    optimizer = torch.optim.Adam(irm.parameters(), lr=1e-4)

    def forward():
        with torch.inference_mode():
            host.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def host_forward_backward():
        embeds = host.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = host.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()

    features = torch.randn(8, 128, host.hidden_size, device=device, dtype=next(irm.parameters()).dtype)

    def irm_forward_backward():
        irm(features).square().mean().backward()
        irm.zero_grad(set_to_none=True)

    with inject(host, irm):
        def step():
            loss = lm_loss(host, ids, mask, ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step_time = timed(step, repeats, device)
    forward_time = timed(forward, repeats, device)
    floor = timed(host_forward_backward, repeats, device) + timed(irm_forward_backward, repeats, device)
    return {"forward_s": forward_time, "train_step_s": step_time, "floor_s": floor, "ratio": step_time / forward_time,
            "ratio_to_floor": step_time / floor, "target": 2.5, "tokens_per_s": ids.numel() / step_time,
            "irm_parameters": sum(p.numel() for p in irm.parameters())}


def _generate(host, injection=None, capture=False):
    return generate(host, QUESTIONS, injection, prompt_format="chat", max_new_tokens=64, batch_size=8, capture=capture,
                    min_new_tokens=64)


def bench_generation(host, repeats: int) -> dict:
    """Generation (KV cache, batch 8, 64 new tokens): IRM active over plain host; capture of all
    layers' IRM outputs over the same generation without capture; bytes per token on disk."""
    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(host, init="paper")).to(host.device)
    plain = timed(lambda: _generate(host), repeats, host.device)
    with inject(host, irm) as injection:
        active = timed(lambda: _generate(host, injection), repeats, host.device)
        captured = timed(lambda: _generate(host, injection, capture=True), repeats, host.device)
        outputs = [g.irm_outputs for g in _generate(host, injection, capture=True)]
    with tempfile.TemporaryDirectory() as tmp:
        size = save_capture(Path(tmp) / "capture.safetensors", outputs)
    tokens = sum(len(t) for t in outputs)
    return {
        "irm": {"plain_s": plain, "irm_s": active, "ratio": active / plain, "target": 1.10},
        "capture": {"irm_s": active, "capture_s": captured, "ratio": captured / active, "target": 1.15,
                    "bytes_per_token": size / tokens, "tokens": tokens},
    }


def bench_load(device: torch.device) -> dict:
    """The embedded host from a warm cache, and cold (dequantising the GGUF into a fresh cache)."""
    warm = timed(lambda: load_host("embedded", device=device), 3, device)
    saved = os.environ.get("IRM_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IRM_CACHE_DIR"] = tmp
        start = time.perf_counter()
        load_host("embedded", device=device)
        cold = time.perf_counter() - start
    if saved is None:
        os.environ.pop("IRM_CACHE_DIR")
    else:
        os.environ["IRM_CACHE_DIR"] = saved
    return {"warm_s": warm, "cold_s": cold, "target_warm_s": 3.0}


def bench_end_to_end() -> dict:
    """Wall time of each notebook, read from the pipeline's completion markers."""
    result = {}
    for profile, target in (("cpu", 3600), ("smoke", 600)):
        out = repo_root() / "runs" / profile / "notebooks"
        seconds = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted(out.glob("*.done"))}
        if seconds:
            result[profile] = {"notebooks_s": seconds, "total_s": sum(seconds.values()), "target_s": target}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    host = load_host("embedded", device=device, dtype=dtype)
    machine = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
               "dtype": str(host.dtype).removeprefix("torch."), "python": platform.python_version(), "torch": torch.__version__,
               "platform": platform.platform()}
    print(f"machine: {machine}")
    section = {"machine": machine, "training": bench_training(host, args.repeats)}
    print(f"1. train step / forward (8 x 128): {section['training']['ratio']:.2f} (target <= 2.5); step / floor "
          f"{section['training']['ratio_to_floor']:.2f}; {section['training']['tokens_per_s']:.0f} tokens/s")
    section.update(bench_generation(host, args.repeats))
    print(f"2. generation with IRM / plain: {section['irm']['ratio']:.3f} (target <= 1.10)")
    print(f"3. capture / no capture: {section['capture']['ratio']:.3f} (target <= 1.15); {section['capture']['bytes_per_token']:.0f} bytes per token on disk")
    section["load"] = bench_load(device)
    print(f"4. host load, warm cache: {section['load']['warm_s']:.2f} s (target <= 3); cold: {section['load']['cold_s']:.1f} s")
    section["end_to_end"] = bench_end_to_end()
    for profile, row in section["end_to_end"].items():
        print(f"5. {profile}: {row['total_s'] / 60:.1f} min end to end (target <= {row['target_s'] / 60:.0f} min): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in row["notebooks_s"].items()))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = f"{device.type}-{machine['dtype']}"
    results[key] = section
    write_json(RESULTS, results)
    print(f"written to {RESULTS} under '{key}'")


if __name__ == "__main__":
    main()
