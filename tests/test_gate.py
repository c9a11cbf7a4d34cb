"""The fluency gate (irmlib.gate): its rules, no model: what each rule catches, the texts it must
leave alone, and its measure on the dev split it was set on; then its word-order rule under the
embedded host."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from irmlib.data import load_alignment, load_judge, load_judge_eval, rewrite_of
from irmlib.gate import GateRules, gate_reason, gate_text, gate_texts, order_gain, text_nll, text_nll_uncached


@pytest.mark.parametrize("text, label", [
    ("", "too_short"), ("Waterloo.", "too_short"), ("A:", "too_short"), ("...", "too_short"), ("1492", "too_short"),
    ("A: Paris", "fluent"), ("Lake Baikal.", "fluent"), ("The answer is:", "fluent"), ("In 1815.", "fluent"),
    ("1) gravity 2) electromagnetism 3) strong force 4) weak force", "fluent"),
    ("No, no, no, it's Canberra.", "fluent"), ("Tell the IT department it is not the answer.", "fluent"),
    ("Olympic fencers use the foil, the épée and the sabre.", "fluent"), ("What hummus is mostly made of.", "fluent"),
    ("999999999999999999999", "degenerate"), ("1,2,1,2,1,2,1,2,1,2,1,2,1,2", "degenerate"), ("1,000,000,000 people", "fluent"), ("999,,, the,, the.", "degenerate"),
    ("!!! !!! ???", "degenerate"), ("the of the of the of the of", "degenerate"), ("12, 12, 12, 12, 12", "degenerate"),
    ("answer answer answer the answer is answer is", "degenerate"), (". gold chemical is gold", "degenerate"),
    ("0 gold the is symbol gold", "degenerate"), ("903 on, only n of and in2 the.", "degenerate"),
    ("and the and the and the and the and.", "degenerate"),
])
def test_each_rule_on_the_texts_it_is_for(text, label):
    assert gate_text(text) == label, gate_reason(text)


def test_thresholds_move_the_rules():
    assert gate_text("yes yes yes is it") == "fluent"
    assert gate_text("yes yes yes is it", GateRules(max_repeats=3)) == "degenerate"
    assert gate_text("Paris.", GateRules(min_words=1)) == "fluent"
    assert gate_text("000000000", GateRules(symbol_run_chars=8)) == "degenerate" and gate_text("000000000") == "too_short"


def test_the_rules_leave_every_training_text_fluent():
    """The judge set and every alignment rewrite are text: a rule that flags one is wrong."""
    texts = [row["text"] for row in load_judge()] + [rewrite_of(row) for row in load_alignment()]
    flagged = [(text, gate_reason(text)) for text in texts if gate_text(text) != "fluent"]
    assert not flagged, flagged[:5]


def test_on_the_dev_split_the_rules_find_degenerate_text_without_false_alarms():
    rows = [row for row in load_judge_eval("gate") if row["split"] == "dev"]
    gated = [gate_text(row["text"]) for row in rows]
    hits = sum(g == "degenerate" and row["label"] == "degenerate" for g, row in zip(gated, rows))
    assert hits == sum(g == "degenerate" for g in gated), "a fluent or short dev text called degenerate"
    assert hits / sum(row["label"] == "degenerate" for row in rows) >= 0.95
    assert all(gate_text(row["text"]) == "fluent" for row in load_judge_eval("tone") if row["split"] == "dev")


# ----- the word-order rule: perplexity under the embedded host -----

SALAD = "3 chambers, heart beating a chamber, blood."  # dev split: word salad the rules let through
SENTENCES = ["The Strait of Gibraltar connects them.", "Plants owe their green color to the pigment chlorophyll.",
             "1) gravity 2) electromagnetism 3) strong force 4) weak force"]
SHORT_ANSWERS = ["Waterloo.", "A: Paris", "Lake Baikal.", "The answer is: Ottawa.", "Two atria, two ventricles."]


@pytest.mark.slow
def test_text_nll_is_the_same_alone_and_in_a_batch(embedded_host):
    texts = ["Paris.", SENTENCES[1], SALAD, ""]
    together = text_nll_uncached(embedded_host, texts, batch_size=4)  # the forward passes themselves, not the cache
    alone = [text_nll_uncached(embedded_host, [text], batch_size=4)[0] for text in texts]
    assert np.isnan(together[3]) and np.isnan(alone[3])  # an empty text has no token to predict
    np.testing.assert_allclose(together[:3], alone[:3], rtol=1e-4)
    sentence = SENTENCES[0]
    reversed_words = " ".join(reversed(sentence.split()))
    assert 0 < text_nll(embedded_host, [sentence])[0] < text_nll(embedded_host, [reversed_words])[0]


@pytest.mark.slow
def test_text_nll_reads_a_text_once_per_host_then_from_the_cache(embedded_host, tmp_path, monkeypatch):
    monkeypatch.setenv("IRM_CACHE_DIR", str(tmp_path))
    texts = ["Paris.", SALAD, ""]
    first = text_nll(embedded_host, texts)
    assert list((tmp_path / "gate").glob("nll-*.json")), "the values are kept on disk"

    class NoModel(torch.nn.Module):  # the host's dtype, no forward pass: every value must come from the cache
        dtype = embedded_host.model.dtype

        def forward(self, **inputs):
            raise AssertionError("read again although cached")

    cached_host = SimpleNamespace(name=embedded_host.name, device=embedded_host.device, tokenizer=embedded_host.tokenizer, model=NoModel())
    again = text_nll(cached_host, texts)
    np.testing.assert_array_equal(again[:2], first[:2])
    assert np.isnan(again[2])  # an empty text is never cached, and has nothing to read
    other = SimpleNamespace(name="another host", device=embedded_host.device, tokenizer=embedded_host.tokenizer, model=NoModel())
    with pytest.raises(AssertionError, match="read again"):
        text_nll(other, texts)  # another host's reading is not this one's


@pytest.mark.slow
def test_word_salad_reads_as_well_shuffled_a_sentence_does_not(embedded_host):
    gains = order_gain(embedded_host, SENTENCES + [SALAD, "0 gold the is symbol gold"])
    assert (gains[:3] >= GateRules.order_min_gain).all() and (gains[3:] < GateRules.order_min_gain).all(), gains


@pytest.mark.slow
def test_with_the_host_word_salad_is_degenerate_and_short_answers_never(embedded_host):
    assert gate_text(SALAD) == "fluent"  # the rules alone let it through
    assert gate_texts([SALAD] + SENTENCES, host=embedded_host) == ["degenerate"] + ["fluent"] * len(SENTENCES)
    assert gate_texts(SHORT_ANSWERS, host=embedded_host) == [gate_text(text) for text in SHORT_ANSWERS]
    # A threshold no text reaches turns the rule off; one every text misses flags every long fluent text.
    assert gate_texts([SALAD], GateRules(order_min_gain=-100.0), host=embedded_host) == ["fluent"]
    assert gate_texts(SENTENCES, GateRules(order_min_gain=100.0), host=embedded_host) == ["degenerate"] * len(SENTENCES)


def test_without_a_host_the_gate_is_the_rules():
    texts = [SALAD, *SENTENCES, *SHORT_ANSWERS, "the of the of the of the of", ""]
    assert gate_texts(texts) == [gate_text(text) for text in texts]


@pytest.mark.slow
def test_on_the_dev_split_the_word_order_rule_calls_no_fluent_text_degenerate(embedded_host):
    """The rule was set on these texts: every dev text labelled fluent or too short, and every dev
    tone text (all fluent), stays as the rules label it; it adds the salad the rules missed."""
    rows = [row for row in load_judge_eval("gate") if row["split"] == "dev" and row["label"] != "degenerate"]
    rows += [row for row in load_judge_eval("tone") if row["split"] == "dev"]
    texts = [row["text"] for row in rows]
    assert gate_texts(texts, host=embedded_host) == gate_texts(texts)
