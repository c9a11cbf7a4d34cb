"""Benchmarks against the project's own floors, each ratio measured in one run on one machine.

    ./reproduce.sh bench          (or: python benchmarks/run.py [--device cuda] [--repeats N] [--precision P])
    ./reproduce.sh bench --precision-check    also row 8: the cpu profile's precision_check runs again in float32

Every benchmark runs in float32 and, where `irmlib.precision.choose_precision` picks a lower
precision on this machine (bf16 autocast on a CPU with native bf16, bf16 or fp16 host weights on
a GPU), in that precision too; the two are timed interleaved, so their ratio is measured in one
run. Writes benchmarks/results.json keyed by machine (CPU model and bf16-relevant flags or GPU,
cores, torch version), with one sub-key per precision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from irmlib.atomic import write_json, write_text
from irmlib.generate import CapturedOutputs, generate
from irmlib.host import Host, load_host
from irmlib.inject import inject
from irmlib.pipeline import cell_label, notebook_dir
from irmlib.profile import NOTEBOOKS
from irmlib.irm import IRM, IRMConfig
from irmlib.objective import Objective
from irmlib.profile import load_profile
from irmlib.precision import Precision, autocast, choose_precision, cpu_bf16_support, cuda_bf16_support
from irmlib.runs import notebooks_dir
from irmlib.train import irm_optimizer, train_step

RESULTS = Path(__file__).parent / "results.json"
QUESTIONS = ["What is the capital of France?", "Why is the sky blue?", "Who wrote Hamlet?", "How do bees make honey?",
             "What is the boiling point of water?", "Name the largest planet.", "When did the Berlin Wall fall?",
             "What does DNA stand for?"]
# Targets: ratios to each benchmark's own floor, measured in one run.
TARGETS = {"train_to_floor": 1.05, "generation_to_floor": 1.05, "capture": 1.15, "bf16_vs_fp32_train": 0.6,
           "load_warm_s": 3.0, "peak_rss_mb": 6144}
# The default run trains 29 IRMs (02: 6; 03: the tone arm; 05: 2 retrained; 06: every arm at 2 to 4 runs and
# the layer subsets): 120 min where bf16 applies.
END_TO_END_TARGET_S = {"cpu": (7200, 14400), "smoke": (600, 600)}  # (where bf16 applies, otherwise)


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


def _autocast(precision: Precision | None):
    return nullcontext() if precision is None else autocast(precision)


def generation_path(precision: Precision) -> tuple:
    """What decides how generation computes: the device and the host's dtype (generation never runs
    under autocast, see irmlib.precision, so cpu-bf16-autocast generates as cpu-float32 does)."""
    return precision.device_type, precision.host_dtype


def random_batch(host, batch: int = 8, tokens: int = 128) -> torch.Tensor:
    """[batch, tokens] random ids away from the special tokens at the ends of the vocabulary."""
    margin = min(100, host.vocab_size // 4)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(margin, host.vocab_size - margin, (batch, tokens), generator=generator).to(host.device)


def random_irm(host) -> IRM:
    """An IRM of the paper's shape for `host` with non-zero weights (so it is not a no-op), fp32."""
    torch.manual_seed(0)
    return IRM(IRMConfig.for_host(host, init="paper")).to(host.device)


def make_train_step(host, irm: IRM, ids: torch.Tensor, precision: Precision | None = None):
    """One optimiser step of `irm` inside `host` on `ids` [batch, tokens], every token labelled:
    irmlib.train.train_step itself, the function every training calls (forward under
    `precision`'s autocast, if any; backward and fused Adam outside it). The IRM's hooks are in
    place only during the step, so the other benchmarks time the host alone."""
    optimizer = irm_optimizer(irm, lr=1e-4)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    precision = precision or choose_precision(ids.device, "float32")

    def step():
        with inject(host, irm) as injection:
            train_step(host, injection, optimizer, batch, Objective(), precision)

    return step


def bench_training(setups: list[tuple[Precision, Host]], repeats: int) -> dict:
    """Per precision: the IRM train step (all layers) at 8 x 128 tokens over the host's forward,
    and over its floor: forward + input-only backward of the host, plus the IRM's own forward and
    backward. All precisions' parts are timed interleaved in one loop."""
    fns, irms = {}, {}
    for precision, host in setups:
        ids = random_batch(host)
        mask = torch.ones_like(ids)
        irm = irms[precision.name] = random_irm(host)

        def forward(host=host, ids=ids, mask=mask, precision=precision):
            with torch.inference_mode(), _autocast(precision):
                host.model(input_ids=ids, attention_mask=mask, use_cache=False)

        def host_forward_backward(host=host, ids=ids, mask=mask, precision=precision):
            with _autocast(precision):
                embeds = host.model.get_input_embeddings()(ids).detach().requires_grad_(True)
                logits = host.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            loss.backward()

        features = torch.randn(*ids.shape, host.hidden_size, device=host.device, dtype=next(irm.parameters()).dtype)

        def irm_forward_backward(irm=irm, features=features, precision=precision):
            with _autocast(precision):
                loss = irm(features).float().square().mean()
            loss.backward()
            irm.zero_grad(set_to_none=True)

        fns.update({f"{precision.name}/step": make_train_step(host, irm, ids, precision), f"{precision.name}/forward": forward,
                    f"{precision.name}/host": host_forward_backward, f"{precision.name}/irm": irm_forward_backward})
    measured = timed_interleaved(fns, repeats, setups[0][1].device)
    results = {}
    for precision, host in setups:
        step, forward = measured[f"{precision.name}/step"], measured[f"{precision.name}/forward"]
        floor = measured[f"{precision.name}/host"] + measured[f"{precision.name}/irm"]
        results[precision.name] = {
            "forward_s": forward, "train_step_s": step, "floor_s": floor, "ratio": step / forward,
            "host_forward_input_backward_s": measured[f"{precision.name}/host"],
            "irm_forward_backward_s": measured[f"{precision.name}/irm"], "ratio_to_floor": step / floor,
            "target_to_floor": TARGETS["train_to_floor"], "tokens_per_s": 8 * 128 / step,
            "irm_parameters": sum(p.numel() for p in irms[precision.name].parameters()),
            "irm_grad_dtype": str(next(irms[precision.name].parameters()).dtype).removeprefix("torch.")}
    return results


def generate_fixed(host, irm: IRM | None = None, capture: bool = False):
    """Batch-8 generation of exactly 64 new tokens in the host's dtype (never under autocast, as
    irmlib generates); with `irm`, its hooks are on for this call only."""
    if irm is None:
        return generate(host, QUESTIONS, prompt_format="chat", max_new_tokens=64, batch_size=8, min_new_tokens=64)
    with inject(host, irm) as injection:
        return generate(host, QUESTIONS, injection, prompt_format="chat", max_new_tokens=64, batch_size=8,
                        capture=capture, min_new_tokens=64)


def irm_input_shapes(host, irm: IRM) -> list[tuple[int, ...]]:
    """The shape of every input the IRM gets in one `generate_fixed`: the left-padded prompt
    [8, prompt, d] once, then [8, 1, d] per generated token fed back."""
    shapes = []
    handle = irm.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        generate_fixed(host, irm)
    finally:
        handle.remove()
    return shapes


def bench_generation(setups: list[tuple[Precision, Host]], repeats: int) -> dict:
    """Per precision, generation (KV cache, batch 8, 64 new tokens): IRM active over plain host and
    over its floor, plain + the IRM's own forwards on exactly the inputs it gets in that generation
    (the prompt once, then one token per step); capture of all layers' IRM outputs over the same
    generation without capture; bytes per token on disk. A precision that generates exactly as an
    earlier one does (cpu-bf16-autocast generates as cpu-float32) is not timed again."""
    fns, info, by_path = {}, {}, {}
    for precision, host in setups:
        by_path.setdefault(generation_path(precision), (precision, host))
    setups = list(by_path.values())
    for precision, host in setups:
        irm = random_irm(host)
        shapes = irm_input_shapes(host, irm)
        dtype = next(irm.parameters()).dtype
        inputs = [torch.randn(*shape, device=host.device, dtype=dtype) for shape in shapes]
        step_input = torch.randn(8, 1, host.hidden_size, device=host.device, dtype=dtype)

        def irm_as_in_generation(irm=irm, inputs=inputs):
            with torch.inference_mode():
                for features in inputs:
                    irm(features)

        def irm_decode_steps_only(irm=irm, n=len(shapes)):  # the floor as first defined
            with torch.inference_mode():
                for _ in range(n):
                    irm(step_input)

        name = precision.name
        fns.update({f"{name}/plain": lambda host=host: generate_fixed(host),
                    f"{name}/irm": lambda host=host, irm=irm: generate_fixed(host, irm),
                    f"{name}/capture": lambda host=host, irm=irm: generate_fixed(host, irm, capture=True),
                    f"{name}/irm_alone": irm_as_in_generation, f"{name}/irm_decode_only": irm_decode_steps_only})
        info[name] = (host, irm, shapes)
    measured = timed_interleaved(fns, repeats, setups[0][1].device)
    results = {}
    for precision, host in setups:
        name = precision.name
        host, irm, shapes = info[name]
        plain, active, captured = measured[f"{name}/plain"], measured[f"{name}/irm"], measured[f"{name}/capture"]
        floor = plain + measured[f"{name}/irm_alone"]
        generations = generate_fixed(host, irm, capture=True)
        outputs = CapturedOutputs([g.irm_outputs for g in generations], [g.prompt_tokens for g in generations])
        with tempfile.TemporaryDirectory() as tmp:
            size = outputs.save(Path(tmp) / "capture.safetensors")
        tokens = sum(len(t) for t in outputs.irm_outputs)
        irm_parameters = sum(p.numel() for p in irm.parameters())
        host_parameters = sum(p.numel() for p in host.model.parameters())
        results[name] = {
            "irm": {"plain_s": plain, "irm_s": active, "ratio": active / plain, "floor_s": floor,
                    "ratio_to_floor": active / floor, "target_to_floor": TARGETS["generation_to_floor"],
                    "irm_forwards_alone_s": measured[f"{name}/irm_alone"], "floor_ratio": floor / plain,
                    "irm_decode_steps_only_s": measured[f"{name}/irm_decode_only"],
                    "floor_ratio_decode_steps_only": (plain + measured[f"{name}/irm_decode_only"]) / plain,
                    "irm_calls": len(shapes), "prompt_tokens_padded": shapes[0][1],
                    "irm_to_host_parameters": irm_parameters / host_parameters},
            "capture": {"irm_s": active, "capture_s": captured, "ratio": captured / active, "target": TARGETS["capture"],
                        "bytes_per_token": size / tokens, "tokens": tokens},
        }
    return results


def bench_load(device: torch.device, dtype: torch.dtype | None = None) -> dict:
    """The embedded host from a warm cache, and cold (dequantising the GGUF into a fresh cache)."""
    warm = timed(lambda: load_host("embedded", device=device, dtype=dtype), 3, device)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"IRM_CACHE_DIR": tmp}):
        start = time.perf_counter()
        load_host("embedded", device=device, dtype=dtype)
        cold = time.perf_counter() - start
    return {"warm_s": warm, "cold_s": cold, "target_warm_s": TARGETS["load_warm_s"]}


def trace(setups: list[tuple[Precision, Host]], out_dir: Path) -> list[Path]:
    """torch.profiler tables (top operators by self time) of one train step and of one
    generation with the IRM, per precision: the evidence for what bounds ratios 1 and 2."""
    from torch.profiler import ProfilerActivity, profile

    written = []
    for precision, host in setups:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if host.device.type == "cuda" else [])
        irm = random_irm(host)
        for name, fn in (("train_step", make_train_step(host, irm, random_batch(host), precision)),
                         ("generation_irm", lambda: generate_fixed(host, irm))):
            fn()
            with profile(activities=activities) as prof:
                fn()
            path = out_dir / f"profile_{name}_{precision.name}.txt"
            sort = "self_cuda_time_total" if host.device.type == "cuda" else "self_cpu_time_total"
            write_text(path, prof.key_averages().table(sort_by=sort, row_limit=25) + "\n")
            written.append(path)
    return written


def end_to_end_row(seconds: dict[str, float], peaks_mb: dict[str, float], profile: str, bf16: bool, expected: list[str],
                   peak_cells: dict[str, str] | None = None) -> dict:
    """One profile's end-to-end row: per-notebook wall time and kernel peak memory against the
    targets, the cell that reached each peak ("cell N: its first line", where recorded), and the
    expected notebooks that have not finished."""
    target_bf16, target_fp32 = END_TO_END_TARGET_S[profile]
    return {"notebooks_s": seconds, "total_s": sum(seconds.values()), "target_s": target_bf16 if bf16 else target_fp32,
            "peak_rss_mb": peaks_mb, "max_peak_rss_mb": max(peaks_mb.values(), default=None),
            "peak_rss_cell": peak_cells or {},
            "target_peak_rss_mb": TARGETS["peak_rss_mb"], "missing": [name for name in expected if name not in seconds]}


def expected_notebooks() -> list[str]:
    return [name for name in NOTEBOOKS if (notebook_dir() / f"{name}.ipynb").exists()]


def bench_end_to_end(bf16: bool = False) -> dict:
    """Wall time and kernel peak memory of each notebook, read from the pipeline's completion markers
    (a profile whose run has not finished every notebook is marked incomplete)."""
    result = {}
    for profile in END_TO_END_TARGET_S:
        markers = {p.stem: json.loads(p.read_text()) for p in sorted(notebooks_dir(profile).glob("*.done"))}
        if markers:
            result[profile] = end_to_end_row({k: m["seconds"] for k, m in markers.items()},
                                             {k: m["peak_rss_mb"] for k, m in markers.items() if m.get("peak_rss_mb")},
                                             profile, bf16, expected_notebooks(),
                                             {k: cell_label(m["peak_rss_cell"]) for k, m in markers.items() if m.get("peak_rss_cell")})
    return result


DONE_LINE = re.compile(r"^\[(?P<name>\w+)\] done in (?P<seconds>\d+(?:\.\d+)?) s, kernel peak memory \(RSS\) (?P<rss>\d+(?:\.\d+)?) MB"
                       r"(?: \(reached in (?P<cell>cell \d+: .*)\))?$")
RUN_LINE = re.compile(r"^run (?P<run>\S+) at commit (?P<commit>\S+)")


def end_to_end_from_log(text: str, profile: str, bf16: bool) -> dict:
    """One profile's end-to-end row from a pipeline's printed output (`./reproduce.sh > log`):
    its "[name] done in N s, kernel peak memory (RSS) M MB" lines. For a run whose notebooks
    were later re-executed with --force (loading the trained IRMs), whose completion markers then
    time the re-execution, not the training."""
    lines = text.splitlines()
    done = [m for m in map(DONE_LINE.match, lines) if m]
    if not done:
        raise ValueError("No '[notebook] done in N s, kernel peak memory (RSS) M MB' line in the pipeline log: "
                         "pass the output of a ./reproduce.sh run.")
    run = next((m for m in map(RUN_LINE.match, lines) if m), None)
    row = end_to_end_row({m["name"]: float(m["seconds"]) for m in done}, {m["name"]: float(m["rss"]) for m in done},
                         profile, bf16, expected_notebooks(), {m["name"]: m["cell"] for m in done if m["cell"]})
    row["source"] = f"pipeline log of run {run['run']} at commit {run['commit']}" if run else "pipeline log"
    return row


def run_precision_check(profile_name: str = "cpu") -> dict:
    """Row 8 measured here: the profile's `precision_check` runs (its own runs, trained first where
    missing, in the precision this machine gets) trained again in float32 and compared
    (irmlib.studies.training.precision_check), with the verdicts; in runs/<profile>/irm/ beside the
    pipeline's runs, so a finished pipeline's runs are reused."""
    from irmlib.data import profile_rows
    from irmlib.studies.training import precision_check, precision_claims

    profile = load_profile(profile_name)
    host = load_host(profile.host)
    table = precision_check(host, profile, profile_rows(profile), profile.precision_check)
    claims = precision_claims(table, profile.analysis)
    for claim in claims:
        print(f"8. {claim}")
    return {"runs": table.to_dict(orient="index"), "claims": [str(claim) for claim in claims],
            "source": f"./reproduce.sh bench --precision-check, {profile_name} profile ({', '.join(profile.precision_check)})"}


def precision_check_from_metrics(profile: str = "cpu") -> dict | None:
    """The check that bf16 does not change the findings (the same runs trained again in float32) as
    a committed metrics.json holds it, from the runs whose notebook 02 still ran it (run
    20261129T231529 and before), with the run it comes from; None where the run has no such check
    (`--precision-check` measures it here)."""
    path = load_profile(profile).figure_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    if "02_precision_check" not in metrics:
        return None
    run = metrics.get("run", {})
    return {"runs": metrics["02_precision_check"],
            "source": f"figures/{profile}/metrics.json of run {run.get('run')} at commit {run.get('commit')}"}


def machine_info(device: torch.device) -> dict:
    """What the results are keyed by: the CPU (model name, bf16-relevant flags) or the GPU, cores,
    threads, torch."""
    cpu = cpu_bf16_support()
    info = {"cpu_model": cpu["model_name"], "cpu_flags": cpu["flags"], "cpu_native_bf16_flags": cpu["native_bf16_flags"],
            "torch_cpu_capability": cpu["torch_cpu_capability"], "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        gpu = cuda_bf16_support(device)
        info.update({"gpu": gpu["gpu"], "gpu_capability": gpu["capability"], "gpu_native_bf16": gpu["native_bf16"]})
        info["device"] = f"{gpu['gpu']} (capability {gpu['capability']})"
    else:
        info["device"] = f"cpu, {info['cores']} cores, {info['threads']} thread{'s' if info['threads'] != 1 else ''}"
    return info


def machine_key(machine: dict) -> str:
    """e.g. "cpu: AMD EPYC | avx2 avx512_bf16 avx512_vnni avx512f | 2 cores | torch 2.13.0+cpu"."""
    flags = " ".join(machine["cpu_flags"]) or "no vector flags read"
    head = f"cuda: {machine['gpu']} (capability {machine['gpu_capability']}) | cpu: " if "gpu" in machine else "cpu: "
    threads = "" if machine["threads"] == machine["cores"] else f" ({machine['threads']} thread{'s' if machine['threads'] != 1 else ''})"
    return f"{head}{machine['cpu_model']} | {flags} | {machine['cores']} cores{threads} | torch {machine['torch']}"


def precisions_to_run(device: torch.device, requested: str = "auto") -> tuple[list[Precision], Precision]:
    """float32, plus the precision chosen for `device` where that is not float32; and the choice."""
    chosen = choose_precision(device, requested)
    fp32 = choose_precision(device, "float32")
    return ([fp32] if chosen.name == fp32.name else [fp32, chosen]), chosen


def bf16_vs_fp32(section: dict, chosen: Precision) -> dict:
    """The chosen lower precision's train step over fp32's (target <= 0.6 where bf16 is native),
    or the reason no lower precision was chosen."""
    fp32_name = f"{chosen.device_type}-float32"
    if chosen.name == fp32_name:
        return {"chosen": chosen.name, "reason": chosen.reason, "target": TARGETS["bf16_vs_fp32_train"]}
    train = section["precisions"]
    gen = section["generation"]
    result = {"chosen": chosen.name, "reason": chosen.reason, "target": TARGETS["bf16_vs_fp32_train"],
              "train_step_ratio": train[chosen.name]["training"]["train_step_s"] / train[fp32_name]["training"]["train_step_s"]}
    if chosen.name in gen:
        result["generation_irm_ratio"] = gen[chosen.name]["irm"]["irm_s"] / gen[fp32_name]["irm"]["irm_s"]
        result["generation_plain_ratio"] = gen[chosen.name]["irm"]["plain_s"] / gen[fp32_name]["irm"]["plain_s"]
    else:
        result["generation"] = f"{chosen.name} generates in float32 (autocast slows one-token steps on CPU)"
    return result


def markdown_table(key: str, section: dict) -> str:
    """The README's table for one machine's results: one row per benchmark and precision."""
    rows = []
    for name, prec in section["precisions"].items():
        t = prec["training"]
        rows.append((f"1. IRM train step / its floor (8 x 128), {name}", f"{t['ratio_to_floor']:.2f}", f"<= {TARGETS['train_to_floor']}",
                     f"step {t['train_step_s']:.2f} s; floor {t['floor_s']:.2f} s = host forward + input-only backward "
                     f"{t['host_forward_input_backward_s']:.2f} s + IRM forward + backward {t['irm_forward_backward_s']:.2f} s; "
                     f"host forward {t['forward_s']:.2f} s (step / forward {t['ratio']:.2f}); {t['tokens_per_s']:.0f} tokens/s"))
    for name, gen in section["generation"].items():
        g = gen["irm"]
        rows.append((f"2. generation with IRM / its floor (batch 8, 64 tokens), {name}", f"{g['ratio_to_floor']:.3f}",
                     f"<= {TARGETS['generation_to_floor']}",
                     f"with IRM / plain {g['ratio']:.3f}; floor (plain + the IRM's own forwards on the {g['prompt_tokens_padded']}-token "
                     f"prompt and {g['irm_calls'] - 1} steps) / plain {g['floor_ratio']:.3f}; IRM = {g['irm_to_host_parameters']:.0%} of host parameters"))
    for name, gen in section["generation"].items():
        c = gen["capture"]
        rows.append((f"3. capture / no capture, {name}", f"{c['ratio']:.3f}", f"<= {TARGETS['capture']}", f"{c['bytes_per_token']:.0f} bytes per token on disk"))
    b = section["bf16_vs_fp32"]
    if "train_step_ratio" in b:
        generation = (f"generation with IRM {b['generation_irm_ratio']:.2f}, plain {b['generation_plain_ratio']:.2f}"
                      if "generation_irm_ratio" in b else b["generation"])
        rows.append((f"4. {b['chosen']} / float32 train step", f"{b['train_step_ratio']:.2f}", f"<= {b['target']}",
                     f"{b['reason']}; {generation}"))
    else:
        rows.append(("4. bf16 / float32 train step", "not run", f"<= {b['target']} where native", f"bf16 not chosen: {b['reason']}"))
    load = section.get("load")
    if load:
        rows.append(("5. host load, warm cache", f"{load['warm_s']:.2f} s", f"<= {load['target_warm_s']:.0f} s",
                     f"cold (dequantise + cache) {load['cold_s']:.1f} s"))
    for profile, row in section.get("end_to_end", {}).items():
        done = ", ".join(f"{k[:2]}: {v / 60:.1f}" for k, v in row["notebooks_s"].items())
        measured = f"{row['total_s'] / 60:.1f} min" if not row.get("missing") else "incomplete"
        detail = done if not row.get("missing") else f"finished so far (min) {done}; not run yet: {', '.join(row['missing'])}"
        if row.get("source"):
            detail += f" ({row['source']})"
        rows.append((f"6. end to end, {profile} profile", measured, f"<= {row['target_s'] / 60:.0f} min", detail))
        if row.get("max_peak_rss_mb"):
            largest = max(row["peak_rss_mb"], key=row["peak_rss_mb"].get)
            where = f"; {largest[:2]}'s peak in {row['peak_rss_cell'][largest]}" if row.get("peak_rss_cell", {}).get(largest) else ""
            rows.append((f"7. peak memory per notebook, {profile} profile", f"{row['max_peak_rss_mb'] / 1024:.2f} GB",
                         f"<= {row['target_peak_rss_mb'] / 1024:.0f} GB",
                         ", ".join(f"{k[:2]}: {v / 1024:.2f}" for k, v in row["peak_rss_mb"].items()) + where))
    check = section.get("precision_check")
    for run, c in (check or {}).get("runs", {}).items():
        same = c["dominant_index"] == c["dominant_index float32"]
        rows.append((f"8. bf16 vs float32 training, cpu profile, {run}", f"{c['relative_difference']:.4f}", "same findings",
                     f"best validation loss {c['best_val_loss']:.3f} (bf16) vs {c['best_val_loss float32']:.3f} (float32); dominant index "
                     f"{c['dominant_index']} vs {c['dominant_index float32']} ({'same' if same else 'differs'}); {check['source']}"))
    machine = section["machine"]
    lines = [f"Machine: {machine['device']}, {machine['cpu_model']} ({' '.join(machine['cpu_native_bf16_flags']) or 'no native bf16 flag'}), "
             f"torch {machine['torch']}", f"Results key: `{key}`", "",
             "| benchmark | measured | target | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b_} | {c_} | {d} |" for a, b_, c_, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto",
                        help="the precision benchmarked beside float32: auto (choose_precision's pick), bfloat16, float16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core); "
                        "1 gives per-core numbers that other load on the machine disturbs less")
    parser.add_argument("--skip-load", action="store_true", help="do not time the host load (its cold run dequantises again)")
    parser.add_argument("--trace", action="store_true", help="also write torch.profiler tables to benchmarks/")
    parser.add_argument("--precision-check", action="store_true",
                        help="train the cpu profile's precision_check runs again in float32 and compare (row 8; minutes per run)")
    parser.add_argument("--pipeline-log", type=Path, default=None,
                        help="the cpu profile's end-to-end row from this ./reproduce.sh output instead of runs/cpu's markers "
                             "(for notebooks re-executed with --force after the run that trained)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions, chosen = precisions_to_run(device, args.precision)
    hosts: dict[torch.dtype, Host] = {}
    for precision in precisions:
        if precision.host_dtype not in hosts:
            hosts[precision.host_dtype] = load_host("embedded", device=device, dtype=precision.host_dtype)
    setups = [(precision, hosts[precision.host_dtype]) for precision in precisions]
    machine = machine_info(device)
    key = machine_key(machine)
    print(f"machine: {key}")
    print(f"precision: {chosen.name} ({chosen.reason}); benchmarked: {', '.join(p.name for p in precisions)}")

    training = bench_training(setups, args.repeats)
    for name, t in training.items():
        print(f"1. [{name}] train step / floor: {t['ratio_to_floor']:.2f} (target <= {TARGETS['train_to_floor']}); step {t['train_step_s']:.2f} s, "
              f"floor {t['floor_s']:.2f} s, host forward {t['forward_s']:.2f} s; {t['tokens_per_s']:.0f} tokens/s")
    generation = bench_generation(setups, args.repeats)
    for name, g in generation.items():
        print(f"2. [{name}] generation with IRM / floor: {g['irm']['ratio_to_floor']:.3f} (target <= {TARGETS['generation_to_floor']}); "
              f"with IRM / plain {g['irm']['ratio']:.3f}, floor / plain {g['irm']['floor_ratio']:.3f} "
              f"(decode steps only: {g['irm']['floor_ratio_decode_steps_only']:.3f})")
        print(f"3. [{name}] capture / no capture: {g['capture']['ratio']:.3f} (target <= {TARGETS['capture']}); "
              f"{g['capture']['bytes_per_token']:.0f} bytes per token on disk")
    section = {"machine": machine, "precision_choice": chosen.as_dict(),
               "precisions": {p.name: {"training": training[p.name]} for p in precisions}, "generation": generation}
    section["bf16_vs_fp32"] = bf16_vs_fp32(section, chosen)
    b = section["bf16_vs_fp32"]
    if "train_step_ratio" in b:
        generation = (f"generation with IRM {b['generation_irm_ratio']:.2f}, plain {b['generation_plain_ratio']:.2f}"
                      if "generation_irm_ratio" in b else b["generation"])
        print(f"4. {b['chosen']} / float32 train step: {b['train_step_ratio']:.2f} (target <= {b['target']}); {generation}")
    else:
        print(f"4. bf16 not chosen: {b['reason']}")
    if not args.skip_load:
        section["load"] = bench_load(device, chosen.host_dtype)
        print(f"5. host load, warm cache: {section['load']['warm_s']:.2f} s (target <= 3); cold: {section['load']['cold_s']:.1f} s")
    bf16 = chosen.autocast_dtype is not None or chosen.host_dtype != torch.float32
    section["end_to_end"] = bench_end_to_end(bf16=bf16)
    if args.pipeline_log:
        section["end_to_end"]["cpu"] = end_to_end_from_log(args.pipeline_log.read_text(), "cpu", bf16)
    for profile, row in section["end_to_end"].items():
        state = f"INCOMPLETE, not run yet: {', '.join(row['missing'])}; " if row["missing"] else ""
        print(f"6. {profile}: {state}{row['total_s'] / 60:.1f} min end to end (target <= {row['target_s'] / 60:.0f} min): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in row["notebooks_s"].items()))
        if row["peak_rss_mb"]:
            print(f"7. {profile}: kernel peak RSS per notebook (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in row["peak_rss_mb"].items()))
            for name, cell in row.get("peak_rss_cell", {}).items():
                print(f"   {name}: peak reached in {cell}")
    section["precision_check"] = run_precision_check("cpu") if args.precision_check else precision_check_from_metrics("cpu")
    for run, check in (section["precision_check"] or {}).get("runs", {}).items():
        print(f"8. [{run}] float32 twin: best validation loss {check['best_val_loss']:.3f} vs {check['best_val_loss float32']:.3f} "
              f"(relative {check['relative_difference']:.4f}), dominant index {check['dominant_index']} vs {check['dominant_index float32']}")
    if args.trace:
        for path in trace(setups, RESULTS.parent):
            print(f"profile: {path}")
    machine["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[key] = section
    write_json(RESULTS, results)
    print(f"written to {RESULTS} under '{key}'\n")
    print(markdown_table(key, section))


if __name__ == "__main__":
    main()
