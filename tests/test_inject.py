"""Injection is exact: against a hand-written reference of the paper's modified Llama layer,
bit-identical when off, and the same with and without a KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from irmlib.host import Host
from irmlib.inject import Capture, inject
from irmlib.irm import IRM, IRMConfig


def random_irm(host: Host, seed: int = 1, **overrides) -> IRM:
    torch.manual_seed(seed)
    return IRM(IRMConfig.for_host(host, init="torch", **overrides)).eval()


def reference_llama_logits(model, input_ids: torch.Tensor, irm: IRM | None, injected: tuple[int, ...]) -> torch.Tensor:
    """The paper's modified Llama decoder, written out by hand: after layer l's attention
    residual add, h <- h + IRM(h0 + attn0(h0))[l], then the MLP sub-block."""
    cfg = model.config
    batch, tokens = input_ids.shape
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // n_heads
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(tokens, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rms_norm(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    causal = torch.full((tokens, tokens), float("-inf")).triu(1)
    h = model.model.embed_tokens(input_ids)
    vectors = None
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        x = rms_norm(h, layer.input_layernorm.weight)
        q = attn.q_proj(x).view(batch, tokens, n_heads, head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, tokens, n_kv, head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, tokens, n_kv, head_dim).transpose(1, 2)
        q, k = rotate(q), rotate(k)
        k, v = k.repeat_interleave(n_heads // n_kv, 1), v.repeat_interleave(n_heads // n_kv, 1)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal, dim=-1)
        attn_out = attn.o_proj((weights @ v).transpose(1, 2).reshape(batch, tokens, -1))
        h = h + attn_out
        if index == 0 and irm is not None:
            vectors = irm(h)
        if irm is not None and index in injected:
            h = h + vectors[:, :, injected.index(index)]
        x = rms_norm(h, layer.post_attention_layernorm.weight)
        h = h + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x))
    return model.lm_head(rms_norm(h, model.model.norm.weight))


@pytest.fixture
def input_ids():
    torch.manual_seed(5)
    return torch.randint(3, 97, (2, 11))


def test_reference_matches_untouched_host(tiny_host, input_ids):
    with torch.no_grad():
        expected = tiny_host.model(input_ids).logits
        ours = reference_llama_logits(tiny_host.model, input_ids, None, ())
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


@pytest.mark.parametrize("injected", [None, (0,), (1, 3), (0, 2, 3)])
def test_active_irm_matches_hand_written_reference(tiny_host, input_ids, injected):
    irm = random_irm(tiny_host, injected_layers=injected)
    layers = irm.config.injected_layers
    with torch.no_grad():
        expected = reference_llama_logits(tiny_host.model, input_ids, irm, layers)
        untouched = tiny_host.model(input_ids).logits
        with inject(tiny_host, irm):
            logits = tiny_host.model(input_ids).logits
    assert not torch.allclose(expected, untouched, atol=1e-3), "the random IRM should change the logits"
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()


def test_inactive_or_removed_irm_is_bit_identical(tiny_host, input_ids):
    irm = random_irm(tiny_host)
    with torch.no_grad():
        before = tiny_host.model(input_ids).logits
        with inject(tiny_host, irm, active=False):
            inactive = tiny_host.model(input_ids).logits
        with inject(tiny_host, irm) as injection:
            active = tiny_host.model(input_ids).logits
            with injection.settings(active=False):
                switched_off = tiny_host.model(input_ids).logits
        after = tiny_host.model(input_ids).logits
    assert not torch.equal(active, before)
    assert torch.equal(inactive, before)
    assert torch.equal(switched_off, before)
    assert torch.equal(after, before)


def test_zero_initialised_irm_leaves_host_unchanged(tiny_host, input_ids):
    irm = IRM(IRMConfig.for_host(tiny_host))
    with torch.no_grad():
        before = tiny_host.model(input_ids).logits
        with inject(tiny_host, irm):
            after = tiny_host.model(input_ids).logits
    assert torch.equal(before, after)


def test_scale_and_mask_act_on_the_injected_vectors(tiny_host, input_ids):
    irm = random_irm(tiny_host)
    with torch.no_grad(), inject(tiny_host, irm) as injection:
        with injection.capturing() as full:
            tiny_host.model(input_ids)
        with injection.settings(scale=0.5, masked_indices=[3, 7]), injection.capturing() as changed:
            tiny_host.model(input_ids)
        with injection.settings(scale=0.0), injection.capturing():
            zero_scale = tiny_host.model(input_ids).logits
    full, changed = full.stacked(), changed.stacked()
    expected = full * 0.5
    expected[..., [3, 7]] = 0
    assert torch.allclose(changed, expected, atol=1e-6)
    assert changed[..., [3, 7]].abs().max() == 0
    with torch.no_grad():
        untouched = tiny_host.model(input_ids).logits
    assert torch.allclose(zero_scale, untouched, atol=1e-6)


def test_mask_index_out_of_range_is_a_clear_error(tiny_host):
    irm = random_irm(tiny_host)
    with pytest.raises(ValueError, match="out of range 0..31"):
        with inject(tiny_host, irm, masked_indices=[32]):
            pass


@pytest.mark.parametrize("model_type,site", [("llama", "post_attn"), ("llama", "block_out"), ("mistral", "post_attn"),
                                             ("qwen2", "post_attn"), ("gpt2", "post_attn"), ("gpt2", "block_out"),
                                             ("gpt_neox", "block_out")])
def test_generate_with_cache_matches_full_forward(model_type, site):
    host = Host.from_model(tiny_model(model_type), name=f"tiny-{model_type}")
    irm = random_irm(host, site=site)
    torch.manual_seed(3)
    prompt = torch.randint(3, 97, (2, 6))
    with torch.no_grad(), inject(host, irm) as injection:
        with injection.capturing() as capture:
            out = host.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                                      output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        full = host.model(out.sequences[:, :-1], use_cache=False).logits
    step_logits = torch.stack(out.logits, dim=1)
    new = step_logits.shape[1]
    assert torch.allclose(step_logits, full[:, -new:], atol=1e-4), (step_logits - full[:, -new:]).abs().max()
    captured = capture.stacked()
    assert captured.shape == (2, out.sequences.shape[1] - 1, host.n_layers, host.hidden_size)
    with torch.no_grad():
        plain = host.model(out.sequences[:, :-1]).logits
    assert not torch.allclose(plain, full, atol=1e-3)


def test_parallel_residual_host_refuses_post_attn_site():
    host = Host.from_model(tiny_model("gpt_neox"), name="tiny-neox")
    with pytest.raises(ValueError, match="block_out"):
        with inject(host, random_irm(host, site="post_attn")):
            pass


def test_capture_per_sequence_drops_padding():
    capture = Capture()
    capture.add(torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).view(2, 3, 1, 2))
    capture.add(torch.zeros(2, 1, 1, 2))
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    first, second = capture.per_sequence(mask)
    assert first.shape == (3, 1, 2) and second.shape == (3, 1, 2)
    assert torch.equal(first[0], torch.tensor([[2.0, 3.0]]))
    assert torch.equal(second[2], torch.tensor([[10.0, 11.0]]))


def test_mask_is_built_once_per_setting_and_works_after_inference_mode(tiny_host, input_ids):
    irm = random_irm(tiny_host)
    with inject(tiny_host, irm, masked_indices=[3]) as injection:
        with torch.inference_mode(), injection.capturing() as captured:
            tiny_host.model(input_ids)  # builds the mask as an inference tensor
            mask = injection._keep
            tiny_host.model(input_ids)
            assert injection._keep is mask  # reused, not rebuilt per forward
        assert captured.stacked()[..., 3].abs().max() == 0
        # Training after generation: the mask must be one autograd can save.
        tiny_host.model(input_ids).logits.sum().backward()
        assert injection._keep is not mask and irm.mlp[-1].weight.grad[3::32].abs().max() == 0
        with injection.settings(masked_indices=[5]):
            assert injection._keep is None
            with torch.no_grad(), injection.capturing() as other:
                tiny_host.model(input_ids)
        assert other.stacked()[..., 5].abs().max() == 0 and other.stacked()[..., 3].abs().max() > 0
