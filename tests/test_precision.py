"""The precision choice per device: CUDA queries and CPU flags mocked, plus one real IRM train
step on a tiny host under whatever this CPU gets (and under forced bf16 autocast)."""

from __future__ import annotations

import json

import pytest
import torch

from irmlib import precision as P

XEON_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: fpu
"""
# A model name that does have bf16 in silicon, with the flags hidden (e.g. by a hypervisor):
# the flags decide, never the name.
EPYC_NO_FLAGS = """processor\t: 0
model name\t: AMD EPYC 9B14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 sve bf16 i8mm
"""


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch):
    """Each test decides anew: no pipeline-wide IRM_PRECISION, no CPU choice cached by an earlier test."""
    monkeypatch.delenv("IRM_PRECISION", raising=False)
    clear = getattr(P._choose_cpu, "cache_clear", lambda: None)
    clear()
    yield
    clear()


def cpu(native: bool, model: str = "Test CPU") -> dict:
    flags = ["avx512_bf16"] if native else []
    return {"model_name": model, "machine": "x86_64", "flags": ["avx512f", *flags], "flags_known": True,
            "native_bf16_flags": flags, "native_bf16": native, "torch_cpu_capability": "AVX512"}


def probe_returning(ratio: float):
    def probe(*args, **kwargs):
        return {"shape": [1024, 576, 1728], "fp32_s": 0.01, "bf16_s": 0.01 * ratio, "ratio": ratio}

    return probe


def probe_must_not_run(*args, **kwargs):
    raise AssertionError("the bf16 probe ran on a CPU without native bf16")


def fake_gpu(monkeypatch, capability: tuple[int, int], name: str) -> None:
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        # torch's own answer: native from 8.0; below that, True through emulation by default.
        return capability >= (8, 0) or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


# --- reading the CPU -----------------------------------------------------------------------------

def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(XEON_SPR)
    support = P.cpu_bf16_support(str(path))
    assert support["model_name"] == "Intel(R) Xeon(R) Platinum 8481C"
    assert support["native_bf16"] and support["native_bf16_flags"] == ["amx_bf16", "avx512_bf16"]
    assert {"avx2", "avx512f", "amx_tile"} <= set(support["flags"]) and "fpu" not in support["flags"]


def test_the_model_name_never_decides(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(EPYC_NO_FLAGS)
    support = P.cpu_bf16_support(str(path))
    assert support["model_name"].startswith("AMD EPYC") and not support["native_bf16"]


def test_aarch64_bf16_feature_counts(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(GRAVITON3)
    assert P.cpu_bf16_support(str(path))["native_bf16_flags"] == ["bf16"]


def test_missing_cpuinfo_means_float32(tmp_path, monkeypatch):
    support = P.cpu_bf16_support(str(tmp_path / "absent"))
    assert not support["flags_known"] and not support["native_bf16"]


def test_probe_times_both_matmuls_on_one_thread_and_restores_the_threads(monkeypatch):
    threads = torch.get_num_threads()
    seen = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), set_threads(n)))
    probe = P.probe_cpu_bf16(shape=(64, 64, 64), repeats=2)
    assert seen == [1, threads] and torch.get_num_threads() == threads  # one thread while probing, restored after
    assert probe["threads"] == 1 and probe["shape"] == [64, 64, 64]
    assert probe["fp32_s"] > 0 and probe["bf16_s"] > 0 and probe["ratio"] > 0


# --- CPU choice ----------------------------------------------------------------------------------

def test_cpu_with_native_bf16_and_a_fast_probe_gets_bf16_autocast(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: cpu(True))
    monkeypatch.setattr(P, "probe_cpu_bf16", probe_returning(0.45))
    chosen = P.choose_precision("cpu")
    assert chosen.name == "cpu-bf16-autocast"
    assert chosen.autocast_dtype is torch.bfloat16 and chosen.host_dtype is torch.float32
    assert chosen.reason == "CPU has avx512_bf16; probe: bf16 matmul 0.45x fp32"


def test_cpu_with_native_bf16_but_a_slow_probe_stays_float32(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: cpu(True))
    monkeypatch.setattr(P, "probe_cpu_bf16", probe_returning(0.95))
    chosen = P.choose_precision("cpu")
    assert chosen.name == "cpu-float32" and chosen.autocast_dtype is None
    assert "0.95x fp32" in chosen.reason


def test_cpu_without_flags_is_float32_and_the_probe_is_not_run(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: cpu(False, "AMD EPYC 7B12"))
    monkeypatch.setattr(P, "probe_cpu_bf16", probe_must_not_run)
    chosen = P.choose_precision("cpu")
    assert chosen.name == "cpu-float32" and chosen.autocast_dtype is None and chosen.host_dtype is torch.float32
    assert "no avx512_bf16 or amx_bf16" in chosen.reason and "probe not run" in chosen.reason


def test_forced_choices_on_cpu(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: cpu(False))
    monkeypatch.setattr(P, "probe_cpu_bf16", probe_must_not_run)
    assert P.choose_precision("cpu", "float32").name == "cpu-float32"
    forced = P.choose_precision("cpu", "bf16")
    assert forced.name == "cpu-bf16-autocast" and "emulated" in forced.reason
    with pytest.raises(P.PrecisionError, match="float16 on CPU is not offered"):
        P.choose_precision("cpu", "float16")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(P.PrecisionError, match=r"Unknown precision 'float8'; choose one of auto, float32, bfloat16, float16"):
        P.choose_precision("cpu", "float8")


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(P.PrecisionError, match="CUDA is not available"):
        P.choose_precision("cuda")


# --- CUDA choice (queries mocked) ----------------------------------------------------------------

def test_t4_gets_float16_host_weights_not_emulated_bf16(monkeypatch):
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    assert torch.cuda.is_bf16_supported()  # the default call would have said yes
    chosen = P.choose_precision("cuda")
    assert chosen.name == "cuda-float16-host"
    assert chosen.host_dtype is torch.float16 and chosen.autocast_dtype is None
    assert "Tesla T4 (capability 7.5)" in chosen.reason and "emulated" in chosen.reason
    with pytest.raises(P.PrecisionError, match="no native bf16"):
        P.choose_precision("cuda", "bfloat16")
    assert P.choose_precision("cuda", "float32").host_dtype is torch.float32


@pytest.mark.parametrize("capability, name", [((8, 0), "NVIDIA A100-SXM4-40GB"), ((9, 0), "NVIDIA H100 80GB HBM3")])
def test_ampere_and_hopper_get_bf16(monkeypatch, capability, name):
    fake_gpu(monkeypatch, capability, name)
    chosen = P.choose_precision("cuda:0")
    assert chosen.name == "cuda-bfloat16" and chosen.host_dtype is torch.bfloat16
    assert chosen.details["gpu"]["capability"] == f"{capability[0]}.{capability[1]}"
    forced = P.choose_precision("cuda", "fp16")
    assert forced.name == "cuda-float16-host" and forced.host_dtype is torch.float16


def test_as_dict_is_json_ready(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: cpu(True))
    monkeypatch.setattr(P, "probe_cpu_bf16", probe_returning(0.4))
    record = json.loads(json.dumps(P.choose_precision("cpu").as_dict()))
    assert record["name"] == "cpu-bf16-autocast" and record["host_dtype"] == "float32"
    assert record["autocast_dtype"] == "bfloat16" and "irm_dtype" not in record  # the IRM is always float32
    assert record["details"]["probe"]["ratio"] == 0.4 and record["details"]["cpu"]["native_bf16"]


def test_autocast_is_a_no_op_without_an_autocast_dtype():
    fp32 = P.Precision("cpu-float32", "cpu", torch.float32, None, "test")
    a = torch.randn(4, 4)
    with P.autocast(fp32):
        assert (a @ a).dtype is torch.float32 and not torch.is_autocast_enabled("cpu")
    bf16 = P.Precision("cpu-bf16-autocast", "cpu", torch.float32, torch.bfloat16, "test")
    with P.autocast(bf16):
        assert (a @ a).dtype is torch.bfloat16


def test_attention_under_autocast_is_float32_sdpa_of_the_same_inputs():
    from conftest import tiny_model

    attention = tiny_model("llama").model.layers[1].self_attn
    torch.manual_seed(0)
    query, key = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    value = torch.randn(2, 4, 6, 8).bfloat16()  # as autocast's value projection returns it
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value.float(), is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = P.sdpa_float32_under_autocast(attention, query, key, value, None, scaling=attention.scaling)
        autocast_sdpa = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True)
    assert output.dtype is torch.bfloat16 and autocast_sdpa.dtype is torch.bfloat16
    torch.testing.assert_close(output, expected.transpose(1, 2).bfloat16(), rtol=0, atol=0)
    assert not torch.equal(output, autocast_sdpa.transpose(1, 2))  # autocast alone would run it in bf16


def test_hosts_get_float32_attention_under_autocast_and_plain_sdpa_outside():
    from conftest import tiny_model

    from irmlib.host import Host

    model = tiny_model("llama")
    model.set_attn_implementation("sdpa")
    ids = torch.randint(3, 97, (2, 12))
    padding = torch.ones_like(ids)
    padding[0, -4:] = 0  # right padding, as in training
    padding[1, :3] = 0  # left padding, as in batched generation
    with torch.no_grad():
        plain = model(ids, attention_mask=padding).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_sdpa = model(ids, attention_mask=padding).logits
        Host.from_model(model, name="tiny-llama")
        assert model.config._attn_implementation == P.FLOAT32_ATTENTION
        assert torch.equal(model(ids, attention_mask=padding).logits, plain)  # padding still masked
        assert not torch.equal(model(ids).logits, plain)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(ids, attention_mask=padding).logits
        assert not torch.equal(ours, bf16_sdpa)
    eager = tiny_model("llama")
    Host.from_model(eager, name="tiny-llama")
    assert eager.config._attn_implementation == "eager"


# --- real (unmocked): one IRM train step on a tiny host --------------------------------------

@pytest.mark.parametrize("requested", ["auto", "bfloat16", "float32"])
def test_irm_train_step_under_the_cpu_precision(tiny_host, requested):
    from irmlib.inject import inject
    from irmlib.irm import IRM, IRMConfig
    from irmlib.objective import lm_loss

    chosen = P.choose_precision("cpu", requested)
    host = tiny_host
    host.model.to(chosen.host_dtype)
    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(host, init="paper"))
    optimizer = torch.optim.Adam(irm.parameters(), lr=1e-3)
    ids = torch.randint(3, host.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    with inject(host, irm):
        with P.autocast(chosen):
            loss = lm_loss(host, ids, mask, ids)
        loss.backward()
    assert loss.dtype is torch.float32 and torch.isfinite(loss)
    for p in irm.parameters():
        assert p.dtype is torch.float32 and p.grad is not None and p.grad.dtype is torch.float32
        assert torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in irm.parameters())
    optimizer.step()
    assert all(s.dtype is torch.float32 for state in optimizer.state.values() for s in state.values() if s.dim() > 0)
    assert not any(p.grad is not None for p in host.model.parameters())


def test_precision_request_gives_the_same_precision_again(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: cpu(True))
    monkeypatch.setattr(P, "probe_cpu_bf16", probe_returning(0.4))
    auto = P.choose_precision("cpu")
    monkeypatch.setattr(P, "probe_cpu_bf16", probe_must_not_run)  # a resumed run does not probe again
    assert P.choose_precision("cpu", P.precision_request(auto)).name == auto.name == "cpu-bf16-autocast"
    assert P.precision_request(P.choose_precision("cpu", "float32")) == "float32"
    for capability, expected in (((7, 5), "cuda-float16-host"), ((9, 0), "cuda-bfloat16")):
        fake_gpu(monkeypatch, capability, "GPU")
        chosen = P.choose_precision("cuda")
        assert chosen.name == expected and P.choose_precision("cuda", P.precision_request(chosen)).name == expected

