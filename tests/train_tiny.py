"""Train an IRM on a tiny random host; run as a script for the multi-process and kill tests.

usage: python train_tiny.py RUN_DIR [--steps N] [--slow SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_model  # noqa: E402
from irmlib.host import Host  # noqa: E402
from irmlib.prompts import make_collate  # noqa: E402
from irmlib.train import TrainConfig, train_irm  # noqa: E402


def tiny_rows(n: int, seed: int) -> list[dict]:
    """Token rows of varied length whose continuation follows a learnable rule."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(6, 14, (1,), generator=generator))
        start = int(torch.randint(3, 50, (1,), generator=generator))
        ids = [(start + 3 * i) % 94 + 3 for i in range(length)]
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def run(run_dir: str, steps: int | None = None, epochs: int = 2, slow: float = 0.0, seed: int = 7, checkpoint_every: int = 2,
        host: Host | None = None, yardstick: dict | None = None, init: str = "paper", lr: float = 1e-3, **train) -> dict:
    """Train (or resume) the tiny IRM in `run_dir`; `host` defaults to a fresh tiny random llama;
    `yardstick`: a probe batch (train_irm); `train`: other TrainConfig fields (a schedule, clipping)."""
    host = host or Host.from_model(tiny_model("llama"), name="tiny-llama")
    plain = make_collate(0)

    def slowed(rows):
        time.sleep(slow)
        return plain(rows)

    collate = slowed if slow else plain
    config = TrainConfig(epochs=epochs, batch_size=4, lr=lr, seed=seed, max_steps=steps, checkpoint_every=checkpoint_every,
                         irm={"init": init}, **train)
    return train_irm(host, tiny_rows(24, 0), tiny_rows(8, 1), collate, config, run_dir, progress=False, yardstick=yardstick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    print(run(args.run_dir, args.steps, args.epochs, args.slow))
