"""The fluency gate's rules (irmlib.gate), no model: what each rule catches, the texts it must
leave alone, and its measure on the dev split it was set on."""

from __future__ import annotations

import pytest

from irmlib.data import load_alignment, load_judge, load_judge_eval, rewrite_of
from irmlib.gate import GateRules, gate_reason, gate_text


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
