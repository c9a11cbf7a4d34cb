"""The one-command pipeline behind ./reproduce.sh: run the numbered notebooks with papermill.

Executed notebooks go to runs/<profile>/notebooks/, each followed by a `.done` marker written
last, so a rerun skips finished stages and a half-finished one is never taken for done.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .atomic import write_json, write_text
from .environment import git_state, repo_root
from .metrics import update_metrics
from .precision import choose_precision, precision_request
from .profile import DEFAULT_PROFILE, OVERRIDES_ENV, ProfileError, available_profiles, load_profile, overrides_from_env
from .runs import is_run_name, notebooks_dir, run_root



def notebook_dir() -> Path:
    return repo_root() / "notebooks"


def _peak_rss_bytes(process) -> int:
    """A process's peak resident set so far: VmHWM from /proc on Linux (the kernel's own
    high-water mark, exact), else its current RSS (psutil)."""
    try:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return process.memory_info().rss


@contextmanager
def child_peak_rss(interval_s: float = 0.2) -> Iterator[dict]:
    """Track the peak resident memory of the child processes started inside the block (papermill's
    kernel, and anything it starts). Yields a dict whose "peak_rss_mb" is set when the block ends,
    with "peak_at", the wall-clock time (time.time()) at which the poll first saw that peak.

    A thread polls every `interval_s`: the peak is the larger of the highest per-process
    high-water mark seen (exact for a single kernel, up to its last `interval_s`) and the highest
    sum of the children's current RSS (for a kernel with children of its own). In-process polling
    because `getrusage(RUSAGE_CHILDREN)` is a running max over every child this process has
    reaped, so it cannot give a per-notebook figure.
    """
    import psutil  # lazy: only the pipeline's memory poll needs it

    me = psutil.Process()
    existing = {p.pid for p in me.children(recursive=True)}
    result: dict = {"peak_rss_mb": None, "peak_at": None}
    peak, peak_at = 0, None
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak, peak_at
        while True:
            total, highest = 0, 0
            for child in me.children(recursive=True):
                if child.pid in existing:
                    continue
                try:
                    total += child.memory_info().rss
                    highest = max(highest, _peak_rss_bytes(child))
                except psutil.Error:  # it ended between listing and reading
                    continue
            if max(highest, total) > peak:
                peak, peak_at = max(highest, total), time.time()
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=poll, name="child-peak-rss", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak_rss_mb"] = round(peak / 2**20, 1) if peak else None
        result["peak_at"] = peak_at


def cell_running_at(executed: Path, when: float) -> dict | None:
    """The code cell of a papermill-executed notebook that was running at wall-clock time `when`
    (from papermill's per-cell start and end times): {"cell": its index among the executed
    notebook's cells, "line": its first line that is not a comment}. None if no cell spans `when`
    (between cells, or no times recorded). A peak seen by a poll can fall up to one poll interval
    after the cell that reached it ended: then the next cell is named."""
    import nbformat  # lazy: only reading an executed notebook needs the notebook stack

    notebook = nbformat.read(str(executed), as_version=4)
    for index, cell in enumerate(notebook.cells):
        times = cell.metadata.get("papermill", {})
        if cell.cell_type != "code" or not times.get("start_time") or not times.get("end_time"):
            continue
        if datetime.fromisoformat(times["start_time"]).timestamp() <= when <= datetime.fromisoformat(times["end_time"]).timestamp():
            lines = [line.strip() for line in cell.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            return {"cell": index, "line": lines[0][:100] if lines else ""}
    return None


def cell_label(cell: dict) -> str:
    """"cell N: its first line", for a `cell_running_at` result."""
    return f"cell {cell['cell']}: {cell['line']}"


def run_notebook(name: str, profile_name: str, out_dir: Path, force: bool = False) -> float | None:
    """Execute one notebook; returns its wall time, or None if it was already done."""
    # Lazy: papermill takes seconds to import, and only running a notebook needs it.
    import papermill
    from papermill.exceptions import PapermillExecutionError

    done = out_dir / f"{name}.done"
    if done.exists() and not force:
        print(f"[{name}] already done ({json.loads(done.read_text())['seconds']:.0f} s); --force reruns it")
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    executed = out_dir / f"{name}.ipynb"
    print(f"[{name}] running ({profile_name} profile) -> {executed}")
    started = time.time()
    try:
        with child_peak_rss() as memory:  # the kernel is a child process of this one
            papermill.execute_notebook(str(notebook_dir() / f"{name}.ipynb"), str(executed), parameters={"profile": profile_name},
                                       cwd=str(notebook_dir()), kernel_name="python3", progress_bar=False)
    except PapermillExecutionError as err:
        print(f"[{name}] FAILED in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
              f"  the executed notebook, with the error, is {executed}", file=sys.stderr)
        raise SystemExit(1) from None
    seconds = time.time() - started
    peak_cell = cell_running_at(executed, memory["peak_at"]) if memory["peak_at"] else None
    write_json(done, {"seconds": seconds, "profile": profile_name, "peak_rss_mb": memory["peak_rss_mb"], "peak_rss_cell": peak_cell})
    peak = f"{memory['peak_rss_mb']:.0f} MB" if memory["peak_rss_mb"] else "not measured"
    where = f" (reached in {cell_label(peak_cell)})" if peak_cell else ""
    print(f"[{name}] done in {seconds:.0f} s, kernel peak memory (RSS) {peak}{where}")
    return seconds


def publish(profile_name: str) -> list[Path]:
    """Copy a run's executed notebooks into notebooks/, without papermill's injected-parameters
    cell, so the committed notebooks carry that run's outputs (papermill's metadata still
    records the profile). Only finished stages are copied."""
    import nbformat  # lazy: see cell_running_at

    profile = load_profile(profile_name)
    out_dir = notebooks_dir(profile)
    published = []
    for name in profile.notebooks:
        executed = out_dir / f"{name}.ipynb"
        if not (out_dir / f"{name}.done").exists():
            continue
        notebook = nbformat.read(executed, as_version=4)
        notebook.cells = [c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        record = notebook.metadata.get("papermill", {})
        root = repo_root().resolve()
        for key in ("input_path", "output_path"):  # this machine's absolute paths, as paths in the repository
            if record.get(key) and Path(record[key]).resolve().is_relative_to(root):
                record[key] = Path(record[key]).resolve().relative_to(root).as_posix()
        target = notebook_dir() / f"{name}.ipynb"
        write_text(target, nbformat.writes(notebook) + "\n")
        published.append(target)
    return published


def summary_lines(metrics: dict) -> str:
    """A few headline numbers from metrics.json, for the end of a run (only keys that
    irmlib.metrics.METRICS_SCHEMA requires, so every run has them)."""
    lines = []
    for run, summary in metrics.get("02_train", {}).items():
        lines.append(f"  {run}: validation loss {summary['initial_val_loss']:.3f} -> {summary['best_val_loss']:.3f}")
    for row in metrics.get("03_generations", {}).get("per_emotion", []):
        if row["mode"] == "greedy":
            lines.append(f"  {row['emotion']} ({row['recipe']}): target-emotion probability {row['p_target_base']:.2f} (base) -> {row['p_target_irm']:.2f} (IRM), "
                         f"perplexity x{row['perplexity_ratio']:.2f}")
    analysis = metrics.get("04_vertical_continuity", {})
    if analysis:
        dominant = {run: m["dominant_index"] for run, m in analysis["runs"].items() if is_run_name(run)}
        lines.append(f"  dominant index per run: {dominant}; host's massive-activation index: {analysis['host_massive_index']}")
    return "\n".join(["Summary:", *lines]) if lines else ""


def run_record(profile, force: bool = False) -> dict:
    """The run these stages belong to: id, commit and clean state, recorded when a run starts
    (`runs/<profile>/run.json`, kept while stages resume; --force starts a new run) and handed to
    the notebooks' kernels through IRM_RUN_*, so every notebook and metrics.json name one run."""
    path = run_root(profile) / "run.json"
    state = git_state()
    if path.exists() and not force:
        record = json.loads(path.read_text())
        if record["commit"] != state["commit"]:
            print(f"warning: this run started at commit {record['commit']}, now at {state['commit']}; "
                  f"--force reruns every stage at one commit", file=sys.stderr)
    else:
        precision = choose_precision("cuda" if torch.cuda.is_available() else "cpu", profile.train.precision)
        record = {"run": time.strftime("%Y%m%dT%H%M%S"), **state, "precision": precision_request(precision),
                  "precision_reason": precision.reason, "profile_overrides": overrides_from_env()}
        write_json(path, record)
        # A new run starts its metrics afresh: a section an earlier run wrote and this one does not
        # (a removed measurement) must not stay beside this run's numbers.
        metrics = profile.figure_dir / "metrics.json"
        metrics.unlink(missing_ok=True)
        update_metrics(metrics, "run", record)
    os.environ.update({"IRM_RUN_ID": record["run"], "IRM_RUN_COMMIT": record["commit"], "IRM_RUN_CLEAN": str(record["clean"]),
                       "IRM_PRECISION": record["precision"]})
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="./reproduce.sh", description="Run the companion's notebooks for one profile.")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {', '.join(available_profiles())}")
    parser.add_argument("--force", action="store_true", help="rerun stages that are already done")
    parser.add_argument("--publish", action="store_true", help="then copy the executed notebooks into notebooks/ (to commit a run)")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
    except ProfileError as err:
        parser.error(str(err))
    if not profile.needs_network:
        # The kernels inherit this: nothing in an offline profile may reach a hub.
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[name] = "1"
    out_dir = notebooks_dir(profile)
    present = [name for name in profile.notebooks if (notebook_dir() / f"{name}.ipynb").exists()]
    record = run_record(profile, args.force)
    print(f"run {record['run']} at commit {record['commit']} ({'clean' if record['clean'] else 'with uncommitted changes'}); "
          f"precision {record['precision']}: {record['precision_reason']}")
    overrides = overrides_from_env()
    if overrides:
        print(f"profile '{profile.name}' with the overrides of {OVERRIDES_ENV}: {overrides}")
    started = time.time()
    for name in present:
        run_notebook(name, profile.name, out_dir, args.force)
    print(f"\nDone in {time.time() - started:.0f} s. Executed notebooks: {out_dir}; figures: {profile.figure_dir}")
    metrics = profile.figure_dir / "metrics.json"
    if metrics.exists():
        print(f"Numbers behind the figures: {metrics}")
        print(summary_lines(json.loads(metrics.read_text())))
    if args.publish:
        for path in publish(profile.name):
            print(f"published {path}")


if __name__ == "__main__":
    main()
