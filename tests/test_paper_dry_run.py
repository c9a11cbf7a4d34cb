"""The paper profile's whole pipeline, offline, on a tiny random Llama with Llama-2-7b-chat's
configuration ratios: notebook 01 builds the SQuAD-derived data with the host (from a small
SQuAD-format file made of the curated questions), 02-06 train, evaluate and analyse on it, 06
runs the paper profile's arms. The numbers mean nothing; the path cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from irmlib.pipeline import NOTEBOOKS
from irmlib.plan import KNOWN_HOSTS

LLAMA2 = KNOWN_HOSTS["meta-llama/Llama-2-7b-chat-hf"]
HIDDEN = 256  # 4096 / 16: head size 128 and the MLP ratio kept, layers scaled with the width


def tiny_llama2(directory: Path) -> Path:
    """A random LlamaForCausalLM shaped like Llama-2-7b-chat divided by 16 in width and layers (2 x 256,
    MLP 688, 2 heads of 128, no grouped-query attention, untied head), saved with the embedded host's
    tokenizer (Llama-2's own cannot be downloaded here)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from irmlib.host import _dequantised_embedded_dir

    tokenizer = AutoTokenizer.from_pretrained(_dequantised_embedded_dir())
    scale = LLAMA2.hidden_size // HIDDEN
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=LLAMA2.intermediate_size // scale,
                         num_hidden_layers=LLAMA2.n_layers // scale, num_attention_heads=LLAMA2.n_heads // scale,
                         num_key_value_heads=LLAMA2.n_kv_heads // scale, max_position_embeddings=4096, rms_norm_eps=1e-5,
                         tie_word_embeddings=LLAMA2.tied_embeddings, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def squad_file(path: Path, questions: int) -> Path:
    """A SQuAD 2.0-format file of the curated set's first questions and answers."""
    from irmlib.data import load_alignment

    pairs = {row["question"]: row["answer"] for row in load_alignment()}
    qas = [{"id": f"curated-{i}", "question": q, "is_impossible": False, "answers": [{"text": a, "answer_start": 0}]}
           for i, (q, a) in enumerate(list(pairs.items())[:questions])]
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "curated", "paragraphs": [{"context": "", "qas": qas}]}]}))
    return path


@pytest.mark.slow
def test_paper_profile_runs_end_to_end_on_a_tiny_llama2(clean_repository, tmp_path):
    copy = clean_repository
    overrides = {
        "host": str(tiny_llama2(tmp_path / "tiny-llama-2-chat")), "needs_network": False,
        "squad_source": str(squad_file(tmp_path / "squad.json", 40)), "squad_rows": 40,
        "epochs": 1, "max_steps": 2, "batch_size": 4, "max_length": 48, "track_every": 1,
        "n_eval_prompts": 4, "max_new_tokens": 8, "retrain_emotions": ["anger"],
        "mechanism": {"base": {"max_steps": 2, "track_every": 1}, "arms": {"A": {"objective": "paper_code"}, "B": {"objective": "fixed"}},
                      "replicated": []},
    }
    env = {**os.environ, "IRM_ROOT": str(copy), "IRM_PROFILE_OVERRIDES": json.dumps(overrides)}
    env.pop("IRM_PROFILE", None)
    result = subprocess.run([sys.executable, "-m", "irmlib.pipeline", "--profile", "paper"], cwd=copy, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"the paper profile's pipeline failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "with the overrides of IRM_PROFILE_OVERRIDES" in result.stdout
    rows = (copy / "runs" / "paper" / "data" / "squad_alignment.jsonl").read_text().splitlines()
    assert len(rows) == 40 * 3  # every question rewritten in each of the paper's three tones
    metrics = json.loads((copy / "figures" / "paper" / "metrics.json").read_text())
    assert {"01_data", "02_train", "03_generations", "04_vertical_continuity", "05_lm_head_probing", "06_mechanism"} <= set(metrics)
    assert set(metrics["02_train"]) == {"anger-seed0", "sadness-seed0", "neutral-seed0"}
    assert metrics["run"]["profile_overrides"]["squad_rows"] == 40
    assert all((copy / "runs" / "paper" / "notebooks" / f"{name}.done").exists() for name in NOTEBOOKS)
