"""The paper profile's whole pipeline, offline, on a tiny random Llama with Llama-2-7b-chat's
configuration ratios: notebook 01 builds the SQuAD-derived data with the host (from a small
SQuAD-format file made of the curated questions), 02-06 train, evaluate and analyse on it, 06
runs the paper profile's arms. The numbers mean nothing; the path cannot rot unnoticed. It runs
as a background job (conftest.Background), beside the other tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import JUDGE_CACHE, copy_of_repository, start_judge_cache
from irmlib.profile import NOTEBOOKS
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


BACKGROUND_ORDER = 1  # the longest background job: first
EMOTIONS = ("anger", "neutral")
SQUAD_ROWS = 20  # 15 training, 3 validation and 2 test questions (assign_split): 06 reads 2 batches of 4 of them
MAKE_HOST = "import sys; from pathlib import Path; from test_paper_dry_run import tiny_llama2; tiny_llama2(Path(sys.argv[1]))"


def run_dry_run(background, work: Path) -> dict:
    copy = copy_of_repository(work / "repository")
    host_dir = work / "tiny-llama-2-chat"
    # Made in a process of its own: a background job must not touch torch's global seed in this one.
    made = background.run([sys.executable, "-c", MAKE_HOST, str(host_dir)], cwd=Path(__file__).parent)
    if made.returncode != 0:
        return {"result": made, "copy": copy}
    overrides = {
        "host": str(host_dir), "needs_network": False,
        # Two of the paper's three tones: anger, and neutral, which 04's steering vectors read against.
        "emotions": list(EMOTIONS),
        "squad_source": str(squad_file(work / "squad.json", SQUAD_ROWS)), "squad_rows": SQUAD_ROWS,
        "epochs": 1, "max_steps": 2, "batch_size": 4, "max_length": 48, "track_every": 1,
        "n_eval_prompts": 4, "max_new_tokens": 8, "retrain_emotions": ["anger"],
        # The analysis at its smallest: every code path, the fewest generations.
        "alphas": [0.0, 1.0], "nudge_sizes": [1.0, 16.0], "random_controls": 1, "capture_new_tokens": 4, "gradient_batches": 2,
        "mechanism": {"base": {"max_steps": 2, "track_every": 1}, "arms": {"A": {"objective": "paper_code"}, "B": {"objective": "fixed"}},
                      "replicated": []},
    }
    env = {"IRM_ROOT": str(copy), "IRM_PROFILE_OVERRIDES": json.dumps(overrides), "IRM_PROFILE": None}
    result = background.run([sys.executable, "-m", "irmlib.pipeline", "--profile", "paper"], cwd=copy, env=env)
    return {"result": result, "copy": copy}


def start_background(background, items, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("paper-dry-run")
    start_judge_cache(background)
    background.submit("paper dry run", lambda: run_dry_run(background, work), after=(JUDGE_CACHE,))


@pytest.mark.slow
@pytest.mark.background
def test_paper_profile_runs_end_to_end_on_a_tiny_llama2(background):
    job = background.result("paper dry run")
    result, copy = job["result"], job["copy"]
    assert result.returncode == 0, f"the paper profile's pipeline failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "with the overrides of IRM_PROFILE_OVERRIDES" in result.stdout
    rows = (copy / "runs" / "paper" / "data" / "squad_alignment.jsonl").read_text().splitlines()
    assert len(rows) == SQUAD_ROWS * len(EMOTIONS)  # every question rewritten in each of the profile's tones
    metrics = json.loads((copy / "figures" / "paper" / "metrics.json").read_text())
    assert {"01_data", "02_train", "03_generations", "04_vertical_continuity", "05_lm_head_probing", "06_mechanism"} <= set(metrics)
    assert set(metrics["02_train"]) == {f"{emotion}-seed0" for emotion in EMOTIONS}
    assert metrics["run"]["profile_overrides"]["squad_rows"] == SQUAD_ROWS
    assert all((copy / "runs" / "paper" / "notebooks" / f"{name}.done").exists() for name in NOTEBOOKS)
