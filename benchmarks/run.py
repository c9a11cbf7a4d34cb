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
from unittest import mock

import torch
import torch.nn.functional as F

from irmlib.files import repo_root, write_json, write_text
from irmlib.generate import generate, save_capture
from irmlib.host import load_host
from irmlib.inject import inject
from irmlib.irm import IRM, IRMConfig
from irmlib.train import lm_loss

RESULTS = Path(__file__).parent / "results.json"
QUESTIONS = ["What is the capital of France?", "Why is the sky blue?", "Who wrote Hamlet?", "How do bees make honey?",
             "What is the boiling point of water?", "Name the largest planet.", "When did the Berlin Wall fall?",
             "What does DNA stand for?"]


def timed_interleaved(fns: dict, repeats: int, device: torch.device) -> dict:
    """Median wall time of each of `fns`, run in turn within each repeat after one warm-up each,
    so that a drift in the machine's speed (other load, frequency) hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` runs after one warm-up."""
    return timed_interleaved({"fn": fn}, repeats, device)["fn"]


def random_batch(host, batch: int = 8, tokens: int = 128) -> torch.Tensor:
    """[batch, tokens] random ids away from the special tokens at the ends of the vocabulary."""
    margin = min(100, host.vocab_size // 4)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(margin, host.vocab_size - margin, (batch, tokens), generator=generator).to(host.device)


def random_irm(host) -> IRM:
    """An IRM of the paper's shape for `host`, PyTorch's default init (so it is not a no-op)."""
    torch.manual_seed(0)
    return IRM(IRMConfig.for_host(host, init="paper")).to(host.device)


def make_train_step(host, irm: IRM, ids: torch.Tensor):
    """One optimiser step of `irm` inside `host` on `ids` [batch, tokens], every token labelled."""
    optimizer = torch.optim.Adam(irm.parameters(), lr=1e-4)
    mask = torch.ones_like(ids)

    def step():
        with inject(host, irm):
            loss = lm_loss(host, ids, mask, ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return step


def bench_training(host, repeats: int) -> dict:
    """IRM train step (all layers) over the host's forward at 8 x 128 tokens, and over the floor:
    forward + input-only backward of the host, plus the IRM's own forward and backward."""
    ids = random_batch(host)
    mask = torch.ones_like(ids)
    irm = random_irm(host)

    def forward():
        with torch.inference_mode():
            host.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def host_forward_backward():
        embeds = host.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = host.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()

    features = torch.randn(*ids.shape, host.hidden_size, device=host.device, dtype=next(irm.parameters()).dtype)

    def irm_forward_backward():
        irm(features).square().mean().backward()
        irm.zero_grad(set_to_none=True)

    measured = timed_interleaved({"step": make_train_step(host, irm, ids), "forward": forward,
                                  "host": host_forward_backward, "irm": irm_forward_backward}, repeats, host.device)
    step_time, forward_time = measured["step"], measured["forward"]
    floor = measured["host"] + measured["irm"]
    return {"forward_s": forward_time, "train_step_s": step_time, "floor_s": floor, "ratio": step_time / forward_time,
            "host_forward_input_backward_s": measured["host"], "irm_forward_backward_s": measured["irm"],
            "ratio_to_floor": step_time / floor, "target": 2.5, "tokens_per_s": ids.numel() / step_time,
            "irm_parameters": sum(p.numel() for p in irm.parameters())}


def generate_fixed(host, irm: IRM | None = None, capture: bool = False):
    """Batch-8 generation of exactly 64 new tokens; with `irm`, its hooks are on for this call only."""
    if irm is None:
        return generate(host, QUESTIONS, prompt_format="chat", max_new_tokens=64, batch_size=8, min_new_tokens=64)
    with inject(host, irm) as injection:
        return generate(host, QUESTIONS, injection, prompt_format="chat", max_new_tokens=64, batch_size=8,
                        capture=capture, min_new_tokens=64)


def bench_generation(host, repeats: int) -> dict:
    """Generation (KV cache, batch 8, 64 new tokens): IRM active over plain host; capture of all
    layers' IRM outputs over the same generation without capture; bytes per token on disk."""
    irm = random_irm(host)
    # The floor: the plain generation plus the IRM's own forwards (one per step, batch 8).
    step_features = torch.randn(8, 1, host.hidden_size, device=host.device, dtype=next(irm.parameters()).dtype)

    def irm_forwards():
        with torch.inference_mode():
            for _ in range(64):
                irm(step_features)

    measured = timed_interleaved({"plain": lambda: generate_fixed(host), "irm": lambda: generate_fixed(host, irm),
                                  "capture": lambda: generate_fixed(host, irm, capture=True), "irm_alone": irm_forwards},
                                 repeats, host.device)
    plain, active, captured = measured["plain"], measured["irm"], measured["capture"]
    outputs = [g.irm_outputs for g in generate_fixed(host, irm, capture=True)]
    with tempfile.TemporaryDirectory() as tmp:
        size = save_capture(Path(tmp) / "capture.safetensors", outputs)
    tokens = sum(len(t) for t in outputs)
    irm_parameters = sum(p.numel() for p in irm.parameters())
    host_parameters = sum(p.numel() for p in host.model.parameters())
    return {
        "irm": {"plain_s": plain, "irm_s": active, "ratio": active / plain, "target": 1.10,
                "irm_forwards_alone_s": measured["irm_alone"], "floor_ratio": (plain + measured["irm_alone"]) / plain,
                "irm_to_host_parameters": irm_parameters / host_parameters},
        "capture": {"irm_s": active, "capture_s": captured, "ratio": captured / active, "target": 1.15,
                    "bytes_per_token": size / tokens, "tokens": tokens},
    }


def bench_load(device: torch.device) -> dict:
    """The embedded host from a warm cache, and cold (dequantising the GGUF into a fresh cache)."""
    warm = timed(lambda: load_host("embedded", device=device), 3, device)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"IRM_CACHE_DIR": tmp}):
        start = time.perf_counter()
        load_host("embedded", device=device)
        cold = time.perf_counter() - start
    return {"warm_s": warm, "cold_s": cold, "target_warm_s": 3.0}


def trace(host, out_dir: Path) -> list[Path]:
    """torch.profiler tables (top operators by self time) of one train step and of one
    generation with the IRM: the evidence for what bounds ratios 1 and 2."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if host.device.type == "cuda" else [])
    irm = random_irm(host)
    written = []
    for name, fn in (("train_step", make_train_step(host, irm, random_batch(host))), ("generation_irm", lambda: generate_fixed(host, irm))):
        fn()
        with profile(activities=activities) as prof:
            fn()
        path = out_dir / f"profile_{name}_{host.device.type}.txt"
        sort = "self_cuda_time_total" if host.device.type == "cuda" else "self_cpu_time_total"
        write_text(path, prof.key_averages().table(sort_by=sort, row_limit=25) + "\n")
        written.append(path)
    return written


def bench_end_to_end() -> dict:
    """Wall time of each notebook, read from the pipeline's completion markers."""
    result = {}
    for profile, target in (("cpu", 3600), ("smoke", 600)):
        out = repo_root() / "runs" / profile / "notebooks"
        seconds = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted(out.glob("*.done"))}
        if seconds:
            result[profile] = {"notebooks_s": seconds, "total_s": sum(seconds.values()), "target_s": target}
    return result


def markdown_table(key: str, section: dict) -> str:
    """The README's table for one machine's results."""
    t, g, c, load = section["training"], section["irm"], section["capture"], section["load"]
    rows = [
        ("1. IRM train step / host forward (8 x 128)", f"{t['ratio']:.2f}", "<= 2.5",
         f"step {t['train_step_s']:.2f} s, forward {t['forward_s']:.2f} s; floor {t['floor_s']:.2f} s = host forward + input-only backward "
         f"{t['host_forward_input_backward_s']:.2f} s + IRM forward + backward {t['irm_forward_backward_s']:.2f} s (floor / forward "
         f"{t['floor_s'] / t['forward_s']:.2f}); {t['tokens_per_s']:.0f} tokens/s"),
        ("2. generation with IRM / plain (batch 8, 64 tokens)", f"{g['ratio']:.3f}", "<= 1.10",
         f"floor (plain + IRM forwards) {g['floor_ratio']:.3f}; IRM = {g['irm_to_host_parameters']:.0%} of host parameters"),
        ("3. capture / no capture", f"{c['ratio']:.3f}", "<= 1.15", f"{c['bytes_per_token']:.0f} bytes per token on disk"),
        ("4. host load, warm cache", f"{load['warm_s']:.2f} s", "<= 3 s", f"cold (dequantise + cache) {load['cold_s']:.1f} s"),
    ]
    for profile, row in section.get("end_to_end", {}).items():
        rows.append((f"5. end to end, {profile} profile", f"{row['total_s'] / 60:.1f} min", f"<= {row['target_s'] / 60:.0f} min",
                     ", ".join(f"{k[:2]}: {v / 60:.1f}" for k, v in row["notebooks_s"].items())))
    lines = [f"Machine: {section['machine']['device']}, {section['machine']['dtype']}, torch {section['machine']['torch']} ({key})", "",
             "| benchmark | measured | target | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="also write torch.profiler tables to benchmarks/")
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
    print(f"2. generation with IRM / plain: {section['irm']['ratio']:.3f} (target <= 1.10); floor (plain + the IRM's own "
          f"forwards) / plain {section['irm']['floor_ratio']:.3f}; IRM has {section['irm']['irm_to_host_parameters']:.0%} of the host's parameters")
    print(f"3. capture / no capture: {section['capture']['ratio']:.3f} (target <= 1.15); {section['capture']['bytes_per_token']:.0f} bytes per token on disk")
    section["load"] = bench_load(device)
    print(f"4. host load, warm cache: {section['load']['warm_s']:.2f} s (target <= 3); cold: {section['load']['cold_s']:.1f} s")
    section["end_to_end"] = bench_end_to_end()
    for profile, row in section["end_to_end"].items():
        print(f"5. {profile}: {row['total_s'] / 60:.1f} min end to end (target <= {row['target_s'] / 60:.0f} min): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in row["notebooks_s"].items()))
    if args.trace:
        for path in trace(host, RESULTS.parent):
            print(f"profile: {path}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = f"{device.type}-{machine['dtype']}"
    results[key] = section
    write_json(RESULTS, results)
    print(f"written to {RESULTS} under '{key}'\n")
    print(markdown_table(key, section))


if __name__ == "__main__":
    main()
