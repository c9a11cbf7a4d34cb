"""The memory and time plan (irmlib.plan) on shapes whose sizes are known."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from irmlib.irm import IRM, IRMConfig
from irmlib.plan import (GB, GPUS, KNOWN_HOSTS, USABLE_SHARE, GPU, HostShape, Options, activation_bytes_per_token, epoch_flops, fits,
                         host_shape, hours, irm_parameters, main, memory, report, rows_per_emotion)
from irmlib.profile import load_profile

PAPER_HOST = KNOWN_HOSTS["meta-llama/Llama-2-7b-chat-hf"]
EMBEDDED = KNOWN_HOSTS["embedded"]


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def llama_on_meta(shape: HostShape):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, vocab_size=shape.vocab_size,
                         num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads,
                         tie_word_embeddings=shape.tied_embeddings)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("hidden, n_layers, injected, width", [(32, 4, (1, 3), 2), (576, 30, None, 3), (4096, 32, None, 3)],
                         ids=["tiny", "embedded", "llama-2-7b"])
def test_irm_parameters_match_a_real_irm(hidden, n_layers, injected, width):
    with torch.device("meta"):
        irm = IRM(IRMConfig(hidden_size=hidden, n_layers=n_layers, injected_layers=injected, width_factor=width))
    assert irm_parameters(hidden, irm.config.n_injected, width) == numel(irm)


@pytest.mark.parametrize("shape", [HostShape("tiny", 3, 32, 64, 97, 4, 2, True), HostShape("tiny-untied", 2, 48, 80, 101, 6, 6, False),
                                   EMBEDDED, KNOWN_HOSTS["HuggingFaceTB/SmolLM2-360M-Instruct"]], ids=lambda s: s.name)
def test_host_parameters_match_a_real_llama(shape):
    assert shape.parameters == numel(llama_on_meta(shape))


def test_known_host_sizes():
    assert PAPER_HOST.parameters == 6_738_415_616  # Llama-2-7b
    assert round(EMBEDDED.parameters / 1e6) == 135 and round(KNOWN_HOSTS["HuggingFaceTB/SmolLM2-360M-Instruct"].parameters / 1e6) == 362


def test_paper_plan_matches_the_sizes_in_issue_11():
    parts = memory(load_profile("paper"), PAPER_HOST)
    irm = irm_parameters(4096, 32)
    assert 2.10e9 < irm < 2.12e9
    assert parts.irm_weights + parts.irm_gradients + parts.adam_state == 16 * irm  # fp32 weights, gradients, two Adam moments
    assert 33.5 < (parts.irm_weights + parts.irm_gradients + parts.adam_state) / GB < 34.0
    assert round(parts.host_weights / GB, 1) == 13.5
    # 8 x 128 tokens of Llama-2-7b activations: a few GB, not tens.
    assert 4 < parts.activations / GB < 10


def test_fits_flips_between_the_40_and_the_80_gb_gpus_for_the_paper_profile():
    total = memory(load_profile("paper"), PAPER_HOST).total
    assert [gpu.name for gpu in GPUS if fits(total, gpu)] == ["A100 80GB", "H100 SXM", "H200"]
    gpu = GPU("test", 40, 1, 1)
    assert fits(USABLE_SHARE * 40 * GB, gpu) and not fits(USABLE_SHARE * 40 * GB + 1, gpu)


def test_ddp_replicates_the_irm_and_splits_the_time():
    profile = load_profile("paper")
    one, two = memory(profile, PAPER_HOST, gpus=1), memory(profile, PAPER_HOST, gpus=2)
    assert two.total - one.total == two.ddp_buckets == one.irm_gradients  # per-GPU batch: nothing shrinks
    flops = epoch_flops(profile, PAPER_HOST, 1000, 100)
    assert hours(flops, GPUS[-1], gpus=2) == pytest.approx(hours(flops, GPUS[-1]) / 2)


def test_options_change_activations_and_time_not_the_irm_state():
    profile = load_profile("paper")
    plain = memory(profile, PAPER_HOST)
    checkpointed = memory(profile, PAPER_HOST, options=Options(checkpointing=True))
    mixed = memory(profile, PAPER_HOST, options=Options(mixed_precision=True))
    assert checkpointed.activations < plain.activations / 2 and checkpointed.adam_state == plain.adam_state
    assert mixed.total > plain.total  # fp32 master weights kept, bf16 copies added
    h100 = next(gpu for gpu in GPUS if gpu.name == "H100 SXM")
    flops = epoch_flops(profile, PAPER_HOST, 1000, 100)
    assert hours(flops, h100, options=Options(mixed_precision=True)) < hours(flops, h100) / 3
    assert epoch_flops(profile, PAPER_HOST, 1000, 100, Options(checkpointing=True))[0] > flops[0]


def test_flops_per_training_token():
    profile = load_profile("paper")
    host_flops, irm_flops = epoch_flops(profile, PAPER_HOST, train_rows=1, val_rows=0)
    tokens = profile.train.max_length
    assert host_flops == 4 * PAPER_HOST.matmul_parameters * tokens  # forward + input-gradient backward
    assert irm_flops == 6 * irm_parameters(4096, 32) * tokens  # forward + backward for inputs and weights


def test_activations_grow_with_the_batch():
    small, large = load_profile("smoke"), load_profile("smoke", batch_size=8)
    assert memory(large, EMBEDDED).activations == 2 * memory(small, EMBEDDED).activations


def test_rows_come_from_the_data_or_an_estimate(monkeypatch, tmp_path):
    assert rows_per_emotion(load_profile("cpu"))[:2] == (424, 47)
    assert rows_per_emotion(load_profile("smoke"))[:2] == (16, 16)
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))  # no SQuAD data built here
    train, validation, source = rows_per_emotion(load_profile("paper", squad_rows=1000))
    assert (train, validation) == (800, 100) and source.startswith("estimated")


def test_host_shape_from_a_local_config_and_clear_errors(tmp_path):
    from transformers import GPT2Config, LlamaConfig

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=99).save_pretrained(tmp_path / "llama")
    shape = host_shape(str(tmp_path / "llama"))
    assert (shape.n_layers, shape.hidden_size, shape.kv_size, shape.vocab_size) == (2, 64, 32, 99)
    GPT2Config().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="Llama-style"):
        host_shape(str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="KNOWN_HOSTS"):
        host_shape("nobody/not-a-cached-model")


def test_main_prints_options_only_where_the_profile_does_not_fit_every_gpu(capsys):
    main(["--profile", "paper", "--gpus", "2"])
    paper = capsys.readouterr().out
    assert "DDP gradient buckets" in paper and "activation checkpointing" in paper and "H200" in paper
    main(["--profile", "cpu"])
    assert "Options" not in capsys.readouterr().out


def saved_bytes(shape: HostShape, n_layers: int, tokens: int) -> int:
    """Bytes PyTorch saves for an input-gradient backward through a frozen bf16 Llama's decoder layers."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, vocab_size=100,
                         num_hidden_layers=n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval().requires_grad_(False)
    weights = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        if tensor.data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    # The residual stream requires a gradient, as it does once the IRM's output is added to it.
    hidden = torch.randn(1, tokens, shape.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.model(inputs_embeds=hidden)
    return sum(saved.values())


def test_host_activation_estimate_is_within_15_percent_of_what_pytorch_saves():
    profile = load_profile("cpu", injected_layers=(0,))  # the IRM's share the same for 1 and 2 host layers
    tokens = profile.train.max_length
    one_layer = (saved_bytes(EMBEDDED, 3, tokens) - saved_bytes(EMBEDDED, 2, tokens)) / tokens
    estimate = activation_bytes_per_token(replace(EMBEDDED, n_layers=2), profile, Options()) \
        - activation_bytes_per_token(replace(EMBEDDED, n_layers=1), profile, Options())
    assert one_layer == pytest.approx(estimate, rel=0.15)


def test_a_profile_that_checkpoints_is_planned_with_checkpointing():
    def activations_gb(text: str) -> float:
        return float(next(line for line in text.splitlines() if line.strip().startswith("activations")).split()[-1])

    plain, checkpointed = report(load_profile("paper")), report(load_profile("paper", activation_checkpointing=True))
    assert activations_gb(checkpointed) < activations_gb(plain) / 2  # the LM head's logits and the IRM stay
