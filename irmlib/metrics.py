"""figures/<profile>/metrics.json: the numbers behind every notebook, one section per notebook
part, each checked against METRICS_SCHEMA before it is written."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_json
from .errors import CompanionError

# The sections of figures/<profile>/metrics.json, one per notebook part (and the run record), with
# the keys that the pipeline's end-of-run summary (irmlib.pipeline.summary_lines) and README's
# findings read: for a section, the keys it must hold; for "each run" sections ({run name: values}),
# the keys every run's values must hold; for row lists, the keys of every row; "profile" names the
# one profile whose run writes a section (the others come from the default pipeline).
METRICS_SCHEMA: dict[str, dict] = {
    "run": {"keys": ("run", "commit", "clean", "precision")},
    "01_data": {"keys": ("questions", "mean_words", "tone_classifier_accuracy", "judge_length_check", "judge_eval", "gate")},
    "02_train": {"each run": ("initial_val_loss", "best_val_loss", "steps", "yardstick_host", "yardstick_start", "yardstick_end",
                              "unstable", "host_damaged", "dominant_index_effect")},
    "03_generations": {"keys": ("judge_cv_accuracy", "prompts", "per_emotion", "alpha_sweep"),
                       "rows": {"per_emotion": ("recipe", "emotion", "mode", "p_target_base", "p_target_irm", "p_target_change",
                                                "p_target_change_low", "p_target_change_high", "verdict", "perplexity_ratio", "flagged_runs")}},
    "04_vertical_continuity": {"keys": ("runs", "shared_dominant_index", "flagged_runs", "host_massive_index", "index_share_mean",
                                        "layer_share_mean", "vertical_continuity_mean", "steering")},
    "05_lm_head_probing": {"keys": ("overall_dominant", "inference_ablation", "inference_ablation_run_flags", "training_ablation", "nudge_kl", "logit_spread_ranks")},
    "06_mechanism": {"keys": ("arms", "runs", "tone", "predictions", "prediction_sets", "host_side", "layer_subsets",
                              "dominant_index_effect")},
    # Notebook 07 runs with a profile of its own: its section is in figures/regime/metrics.json.
    "07_regime": {"keys": ("cells", "long", "dominant_index_effect", "recommendation", "thresholds", "claims"), "profile": "regime"},
}


class MetricsSchemaError(CompanionError, ValueError):
    """A metrics section or key that METRICS_SCHEMA does not have, or a key it requires missing."""


def check_metrics(section: str, values: dict) -> None:
    """Raise MetricsSchemaError unless `values` holds what METRICS_SCHEMA requires of `section`."""
    schema = METRICS_SCHEMA.get(section)
    if schema is None:
        raise MetricsSchemaError(f"Unknown metrics section '{section}'; known: {', '.join(METRICS_SCHEMA)}. "
                                 f"Add it to irmlib.metrics.METRICS_SCHEMA with the keys readers rely on.")
    problems = [f"'{key}'" for key in schema.get("keys", ()) if key not in values]
    problems += [f"'{key}' of run '{run}'" for run, run_values in values.items() for key in schema.get("each run", ())
                 if key not in run_values]
    problems += [f"'{key}' of a '{rows}' row" for rows, keys in schema.get("rows", {}).items() for row in values.get(rows, [])
                 for key in keys if key not in row]
    if problems:
        raise MetricsSchemaError(f"Metrics section '{section}' lacks {', '.join(dict.fromkeys(problems))} "
                                 f"(irmlib.metrics.METRICS_SCHEMA); compute them before writing the section.")


def json_value(value):
    """A table's value as metrics.json keeps it: a numpy scalar as the Python number it holds."""
    return value.item() if hasattr(value, "item") else value


def update_metrics(path: str | Path, section: str, values: dict) -> None:
    """Merge `values` under `section` of a metrics JSON file, atomically, after checking them
    against METRICS_SCHEMA."""
    check_metrics(section, values)
    path = Path(path)
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[section] = values
    write_json(path, metrics)
