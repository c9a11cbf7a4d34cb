"""Generation (irmlib.generate): plain and chat prompts, capturing the IRM outputs, and the
captures notebook 04 saves and notebooks 05-06 load (or make, when run alone)."""

from __future__ import annotations

import pytest
import torch

from irmlib.generate import CapturedOutputs, generate, load_or_capture
from irmlib.inject import inject
from irmlib.irm import IRM, IRMConfig


def greedy(host, ids: list[int], new_tokens: int) -> list[int]:
    """The host's greedy continuation of one unpadded prompt, written out: stop after EOS."""
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(new_tokens):
            token = int(host.model(torch.tensor([ids])).logits[0, -1].argmax())
            if token == host.tokenizer.eos_token_id:
                break
            ids.append(token)
            out.append(token)
    return out


def test_plain_generation_continues_the_question_and_a_space(tiny_text_host):
    """The plain format: the question + " " as the prompt, no template, no special token; a batch
    of prompts of different lengths (left-padded) gives each prompt's own greedy text."""
    host = tiny_text_host
    questions = ["w5 w6 w7", "w8"]
    out = generate(host, questions, prompt_format="plain", max_new_tokens=5)
    assert [g.question for g in out] == questions and [g.prompt_tokens for g in out] == [3, 1]
    for g, prompt in zip(out, ([5, 6, 7], [8])):
        expected = greedy(host, prompt, 5)
        assert g.text == " ".join(f"w{t}" for t in expected) and g.new_tokens == len(expected) + (len(expected) < 5)
        assert g.irm_outputs is None
    with pytest.raises(ValueError, match="prompt_format"):
        generate(host, questions, prompt_format="instruct")


@pytest.mark.slow
def test_generation_with_capture_gives_one_tensor_per_sequence(embedded_host):
    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(embedded_host, injected_layers=(0, 10, 29)))
    questions = ["What is the capital of France?", "Name a colour."]
    base = generate(embedded_host, questions, prompt_format="chat", max_new_tokens=8)
    with inject(embedded_host, irm) as injection:
        out = generate(embedded_host, questions, injection, prompt_format="chat", max_new_tokens=8, capture=True)
    # A zero-init IRM leaves the host unchanged: same greedy text.
    assert [g.text for g in out] == [g.text for g in base]
    for g in out:
        assert g.irm_outputs.shape == (g.prompt_tokens + g.new_tokens - 1, 3, embedded_host.hidden_size)
        assert g.irm_outputs.dtype == torch.float16
    assert out[0].prompt_tokens != out[1].prompt_tokens, "left padding must be dropped per sequence"
    with pytest.raises(ValueError, match="needs an injection"):
        generate(embedded_host, questions, prompt_format="chat", max_new_tokens=2, capture=True)


def test_captures_keep_prompt_and_generated_tokens_apart(tmp_path):
    captured = CapturedOutputs([torch.arange(24.0).reshape(4, 2, 3), torch.ones(3, 2, 3)], [1, 2])
    assert [len(t) for t in captured.part("prompt")] == [1, 2] and [len(t) for t in captured.part("generated")] == [3, 1]
    size = captured.save(tmp_path / "c.safetensors")
    loaded = CapturedOutputs.load(tmp_path / "c.safetensors")
    assert size > 0 and loaded.prompt_tokens == [1, 2] and all(torch.equal(a, b) for a, b in zip(loaded.irm_outputs, captured.irm_outputs))
    with pytest.raises(ValueError, match="part must be"):
        captured.part("answer")


def test_load_or_capture_writes_the_file_once_then_loads_it_without_capturing(tiny_text_host, tmp_path, monkeypatch):
    import irmlib.generate

    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(tiny_text_host, init="torch")).eval()
    questions = ["w5 w6 w7", "w8"]
    path = tmp_path / "captures" / "anger-seed0.safetensors"
    path.parent.mkdir()
    first = load_or_capture(tiny_text_host, irm, questions, "plain", path, new_tokens=3)
    assert path.exists(), "the first call saves what it captured"
    assert first.prompt_tokens == [3, 1] and all(t.shape[1:] == (tiny_text_host.n_layers, tiny_text_host.hidden_size)
                                                 for t in first.irm_outputs)
    # Prompt tokens and up to 3 generated ones (the last generated one is never fed back).
    assert all(n <= len(t) <= n + 3 for t, n in zip(first.irm_outputs, first.prompt_tokens))
    written = path.stat().st_mtime_ns
    monkeypatch.setattr(irmlib.generate, "capture_irm_outputs", lambda *a, **k: pytest.fail("captured again"))
    second = load_or_capture(tiny_text_host, irm, questions, "plain", path, new_tokens=3)
    assert path.stat().st_mtime_ns == written
    assert second.prompt_tokens == first.prompt_tokens and second.new_tokens == 3
    assert all(torch.equal(a, b) for a, b in zip(second.irm_outputs, first.irm_outputs))


def test_load_or_capture_captures_again_for_another_number_of_new_tokens(tiny_text_host, tmp_path, monkeypatch):
    import irmlib.generate

    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(tiny_text_host, init="torch")).eval()
    path = tmp_path / "anger-seed0.safetensors"
    captures = []
    capture = irmlib.generate.capture_irm_outputs
    monkeypatch.setattr(irmlib.generate, "capture_irm_outputs", lambda *a, **k: captures.append(k["new_tokens"]) or capture(*a, **k))
    load_or_capture(tiny_text_host, irm, ["w5 w6 w7", "w8"], "plain", path, new_tokens=1)
    longer = load_or_capture(tiny_text_host, irm, ["w5 w6 w7", "w8"], "plain", path, new_tokens=3)
    assert captures == [1, 3], "a file of 1 new token is not read as one of 3"
    assert longer.new_tokens == 3 and CapturedOutputs.load(path).new_tokens == 3
