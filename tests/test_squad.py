"""The SQuAD generator: pairs as the paper took them, rows in the alignment schema, and a build that
resumes after a kill into exactly the file an uninterrupted build writes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import Killed, kill_on_call
from irmlib.data import DataError, load_alignment
from irmlib.squad import build_squad_alignment, rewrite_batches, squad_pairs

SQUAD_TINY = Path(__file__).parent / "fixtures" / "squad_tiny.json"


@pytest.fixture
def embedded(embedded_host):
    return embedded_host


def test_squad_pairs_take_answers_then_plausible_answers():
    pairs = squad_pairs(SQUAD_TINY)
    assert [(p["id"], p["answer"]) for p in pairs] == [
        ("q-answerable-1", "late 1990s"), ("q-answerable-2", "Destiny's Child"), ("q-impossible-1", "Destiny's Child")]
    assert len(squad_pairs(SQUAD_TINY, limit=2)) == 2 and squad_pairs(SQUAD_TINY, limit=0) == [], "a limit of 0 is not 'all pairs'"


def test_squad_pairs_bad_file_is_a_clear_error(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"x\.json, top level: expected an object, got list\. A SQuAD-format file is"):
        squad_pairs(tmp_path / "x.json")


def test_batches_are_fixed_by_source_order_not_by_what_is_left():
    pairs = [{"id": f"p{i}"} for i in range(5)]
    ids = [[f"{pair['id']}-{emotion}" for pair, emotion in batch] for batch in rewrite_batches(pairs, ("anger", "joy"), 2)]
    assert ids == [["p0-anger", "p1-anger"], ["p2-anger", "p3-anger"], ["p4-anger"],
                   ["p0-joy", "p1-joy"], ["p2-joy", "p3-joy"], ["p4-joy"]]
    # A smaller limit changes only the last batch of each emotion.
    assert rewrite_batches(pairs[:3], ("anger",), 2)[0] == rewrite_batches(pairs, ("anger",), 2)[0]


@pytest.mark.slow
def test_squad_generator_writes_the_schema_and_resumes(tmp_path, embedded):
    out = tmp_path / "squad.jsonl"
    build_squad_alignment(embedded, out, emotions=("anger",), source=SQUAD_TINY, limit=2, max_new_tokens=8, progress=False)
    rows = load_alignment(out)
    assert [r["id"] for r in rows] == ["squad-q-answerable-1-anger", "squad-q-answerable-2-anger"]
    with open(out, "a") as handle:
        handle.write('{"id": "torn')  # a kill in the middle of a write
    build_squad_alignment(embedded, out, emotions=("anger", "sadness"), source=SQUAD_TINY, max_new_tokens=8, progress=False)
    rows = load_alignment(out)
    assert len(rows) == 6 and Counter(r["emotion"] for r in rows) == {"anger": 3, "sadness": 3}
    assert rows[0]["id"] == "squad-q-answerable-1-anger"


@pytest.mark.slow
def test_an_interrupted_build_resumes_to_the_uninterrupted_file(tmp_path, monkeypatch, embedded):
    def build(out: Path) -> Path:
        return build_squad_alignment(embedded, out, emotions=("anger",), source=SQUAD_TINY, batch_size=2, max_new_tokens=8,
                                     progress=False)

    whole = build(tmp_path / "whole.jsonl").read_text()
    # Batches: pairs (1, 2), then (3). Killed before the second...
    out = tmp_path / "resumed.jsonl"
    kill_on_call(monkeypatch, embedded.model, "generate", nth=2)
    with pytest.raises(Killed):
        build(out)
    monkeypatch.undo()
    assert len(out.read_text().splitlines()) == 2
    # ...and, so that a batch half written is resumed too, as if killed while writing its second row.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:20])
    build(out)
    assert out.read_text() == whole
