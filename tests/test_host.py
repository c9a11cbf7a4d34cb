"""Host loading: the embedded model offline, local paths, clear errors, chat templates."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from irmlib.host import LLAMA2_CHAT_TEMPLATE, Host, HostLoadError, load_host, prepare_tokenizer


def test_hub_id_offline_and_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(HostLoadError, match="not in the local Hugging Face cache.*'embedded'"):
        load_host("meta-llama/Llama-2-7b-chat-hf", device="cpu")


def test_local_path_loads_and_is_frozen(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(97)} | {"[UNK]": 96}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w2", unk_token="[UNK]").save_pretrained(tmp_path)
    host = load_host(str(tmp_path), device="cpu")
    assert host.n_layers == 4 and host.hidden_size == 32 and host.tokenizer.pad_token == "w2"
    assert not any(p.requires_grad for p in host.model.parameters())
    assert not host.model.training


def test_unsupported_family_is_a_clear_error():
    from transformers import AutoModelForCausalLM, BloomConfig

    model = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=50, hidden_size=16, n_layer=2, n_head=2))
    with pytest.raises(HostLoadError, match="supported families"):
        Host.from_model(model)


def test_llama2_gets_its_inst_chat_template():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "[UNK]": 2}, unk_token="[UNK]")),
                                  bos_token="<s>", eos_token="</s>")
    prepare_tokenizer(tok, "meta-llama/Llama-2-7b-chat-hf")
    assert tok.chat_template == LLAMA2_CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False)
    assert text == "<s>[INST] Hi? [/INST]"


@pytest.mark.slow
def test_embedded_host_loads_offline_and_answers(embedded_host):
    host = embedded_host  # load_host("embedded", device="cpu"), offline, once per session (conftest.py)
    assert (host.n_layers, host.hidden_size, host.vocab_size) == (30, 576, 49152)
    assert host.dtype == torch.float32
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    encoded = host.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = host.model.generate(**encoded, max_new_tokens=12, do_sample=False)
    assert "Paris" in host.tokenizer.decode(out[0, encoded["input_ids"].shape[1]:])
