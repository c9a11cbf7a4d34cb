"""A notebook's set-up in one call: the profile (papermill's `profile` and `overrides`
parameters, else $IRM_PROFILE), quiet progress bars, seeds, the figure style, and what the
notebook works on: the host, the alignment rows, where figures and metrics go.

    setup = start(profile, overrides)           # the parameters cell's two values
    setup.config, setup.host, setup.rows, setup.figure_dir, setup.metrics_path
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed

from .data import profile_rows
from .environment import quiet_progress
from .host import Host, load_host
from .plots import setup_style
from .profile import Profile, load_profile


@dataclass
class Setup:
    """What every notebook starts from. host and rows are None where `start` was told not to load them."""

    config: Profile
    host: Host | None
    rows: list[dict] | None
    figure_dir: Path
    metrics_path: Path


def start(profile: str | None = None, overrides: dict | None = None, host: bool = True, rows: bool = True, seed: int = 0) -> Setup:
    """Load the profile (with `overrides`, any profile, train, IRM or analysis field), silence
    progress bars, seed everything with `seed`, set the figure style, print how the profile
    differs from the paper's setup, then load the host and the alignment rows (where asked).
    rows=False where the rows do not exist yet (notebook 01 builds the paper profile's)."""
    config = load_profile(profile, **(overrides or {}))
    quiet_progress()
    set_seed(seed)
    setup_style()
    differences = ", ".join(f"{k}={v[0]}" for k, v in config.differences().items()) or "nothing"
    print(f"profile {config.name}; differs from the paper's setup in: {differences}")
    return Setup(config=config, host=load_host(config.host) if host else None, rows=profile_rows(config) if rows else None,
                 figure_dir=config.figure_dir, metrics_path=config.figure_dir / "metrics.json")
