"""The one-command pipeline behind ./reproduce.sh: run the numbered notebooks with papermill.

Executed notebooks go to runs/<profile>/notebooks/, each followed by a `.done` marker written
last, so a rerun skips finished stages and a half-finished one is never taken for done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .files import repo_root, write_json
from .profile import DEFAULT_PROFILE, ProfileError, available_profiles, load_profile

NOTEBOOKS = ("01_data", "02_train_irm", "03_sample_generations", "04_vertical_continuity", "05_lm_head_probing")


def notebook_dir() -> Path:
    return repo_root() / "notebooks"


def run_notebook(name: str, profile_name: str, out_dir: Path, force: bool = False) -> float | None:
    """Execute one notebook; returns its wall time, or None if it was already done."""
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
        papermill.execute_notebook(str(notebook_dir() / f"{name}.ipynb"), str(executed), parameters={"profile": profile_name},
                                   cwd=str(notebook_dir()), kernel_name="python3", progress_bar=False)
    except PapermillExecutionError as err:
        print(f"[{name}] FAILED in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
              f"  the executed notebook, with the error, is {executed}", file=sys.stderr)
        raise SystemExit(1) from None
    seconds = time.time() - started
    write_json(done, {"seconds": seconds, "profile": profile_name})
    print(f"[{name}] done in {seconds:.0f} s")
    return seconds


def quick_demo(profile_name: str) -> None:
    """Until notebook 02 exists: train one IRM (anger, first seed) and print base vs IRM answers."""
    from .data import as_datasets, load_alignment
    from .generate import generate
    from .host import load_host
    from .inject import inject
    from .irm import load_irm
    from .train import run_directory, train_for_profile

    profile = load_profile(profile_name)
    host = load_host(profile.host)
    rows = load_alignment()
    emotion, seed = profile.emotions[0], profile.seeds[0]
    summary = train_for_profile(host, profile, emotion, seed, rows)
    print(f"[demo] {emotion} IRM: training loss {summary['first_train_loss']:.3f} -> {summary['last_train_loss']:.3f}, "
          f"best validation loss {summary['best_val_loss']:.3f}, {summary['seconds_per_step']:.2f} s/step")
    irm = load_irm(run_directory(profile, emotion, seed) / "best", host)
    questions = as_datasets(rows, emotion)["test"]["question"][:4]
    base = generate(host, questions, prompt_format=profile.prompt_format, max_new_tokens=profile.max_new_tokens)
    with inject(host, irm) as injection:
        aligned = generate(host, questions, injection, prompt_format=profile.prompt_format, max_new_tokens=profile.max_new_tokens)
    for b, a in zip(base, aligned):
        print(f"\nQ: {b.question}\n  base: {b.text}\n  IRM ({emotion}): {a.text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="./reproduce.sh", description="Run the companion's notebooks for one profile.")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {', '.join(available_profiles())}")
    parser.add_argument("--force", action="store_true", help="rerun stages that are already done")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
    except ProfileError as err:
        parser.error(str(err))
    out_dir = profile.run_dir / "notebooks"
    present = [name for name in NOTEBOOKS if (notebook_dir() / f"{name}.ipynb").exists()]
    started = time.time()
    for name in present:
        run_notebook(name, profile.name, out_dir, args.force)
    if "02_train_irm" not in present:
        quick_demo(profile.name)
    print(f"\nDone in {time.time() - started:.0f} s. Executed notebooks: {out_dir}; figures: {profile.figure_dir}")
    metrics = profile.figure_dir / "metrics.json"
    if metrics.exists():
        print(f"Numbers behind the figures: {metrics}")


if __name__ == "__main__":
    main()
