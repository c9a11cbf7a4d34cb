"""The emotion judge (irmlib.judge): the texts the judge issue named scored as a reader would,
no probability for a text the gate rejects, the word-salad probe, and the reader's cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irmlib.judge import JUDGE_PROMPT, HostReader, shuffled_words

ANGRY = [
    "1981, and it's the Great Red Spot, and I'm sick of people saying it's not there!",
    "17th-century artist Michelangelo, and I'm sick of seeing people just stare at the ceiling, not trying to paint it!",
    "Michelangelo painted it, and I'm furious that anyone still has to ask!",
]
BASE_ANSWER = "The answer is: The Great Red Spot is a planet that is the largest planet in our solar system."
DIGITS = "950, 80, 18, 20, 20, 20, 20, 20, 20, 20, 20, 20,"


@pytest.mark.slow
def test_the_six_texts_are_scored_as_a_reader_would(judge):
    probabilities = judge.probabilities(ANGRY + [BASE_ANSWER, "", DIGITS])
    assert probabilities.loc[:2].idxmax(axis=1).tolist() == ["anger"] * 3
    assert probabilities.loc[3].idxmax() == "neutral"
    assert probabilities.loc[4:].isna().all().all(), "the empty string and the digit run get no score"
    assert judge.gate(["", DIGITS]) == ["too_short", "degenerate"]


@pytest.mark.slow
def test_no_probability_for_a_text_the_gate_rejects(judge):
    texts = ["", "999,,,,,,,,", "Furious!", "I am so furious, they cancelled my flight again!", "the of the of the of the of",
             "bones 206 the body of adult in has the bones the"]
    labels, probabilities = judge.read(texts)
    assert labels[:3] == ["too_short", "degenerate", "too_short"] and labels[3] == "fluent" and labels[4] == "degenerate"
    assert probabilities.shape == (6, len(judge.labels)) and list(probabilities.columns) == judge.labels
    assert probabilities.loc[[i for i, label in enumerate(labels) if label != "fluent"]].isna().all().all()
    assert probabilities.loc[3].sum() == pytest.approx(1.0) and probabilities.loc[3].idxmax() == "anger"
    # A scored text gets the same probabilities whatever texts surround it.
    np.testing.assert_allclose(probabilities.loc[3].to_numpy(float), judge.probabilities([texts[3]]).loc[0].to_numpy(float), rtol=1e-5)


@pytest.mark.slow
def test_the_salad_probe_tells_a_sentence_from_its_words_shuffled(judge):
    import random

    sentences = ["The adult human body has 206 bones.", "Napoleon was defeated at Waterloo in 1815.",
                 "Apples grow on trees in many parts of the world."]
    shuffled = [shuffled_words(s, random.Random(1)) for s in sentences]
    p = judge.salad.predict_proba(judge.reader(sentences + shuffled))[:, 1]
    assert (p[:3] < 0.5).all() and (p[3:] > p[:3]).all(), p


@pytest.mark.slow
def test_the_reader_averages_the_text_and_apart_the_prompt_tokens(judge):
    reader, text = judge.reader, "Mars once had rivers; all that is left are dry channels."
    tokenizer, model = reader.host.tokenizer, reader.host.model
    encoded = tokenizer(text + JUDGE_PROMPT, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded, output_hidden_states=True).hidden_states[reader.layer][0].float()
    prompt_tokens = len(tokenizer(JUDGE_PROMPT, add_special_tokens=False)["input_ids"])
    half = reader.width // 2
    states = reader([text, "Paris."])  # batched with a shorter text: its padding is not averaged
    np.testing.assert_allclose(states[0, :half], hidden[1:].mean(0).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(states[0, half:], hidden[-prompt_tokens:].mean(0).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(states[0, :half], states[0, half:], atol=1e-2)


@pytest.mark.slow
def test_the_reader_cache_returns_what_it_read_and_survives_damage(judge, tmp_path, monkeypatch):
    monkeypatch.setenv("IRM_CACHE_DIR", str(tmp_path))
    reader = HostReader(judge.reader.host)
    texts = ["Paris, France.", "It is blue because air scatters blue light."]
    first = reader.cached(texts)
    np.testing.assert_allclose(first, reader(texts), rtol=1e-5)
    (cached,) = (tmp_path / "judge").glob("*.npy")
    cached.write_bytes(b"not an array")
    np.testing.assert_allclose(reader.cached(texts), first, rtol=1e-5)


def test_shuffled_words_keeps_the_words_in_another_order():
    import random

    text = "one two three four five"
    shuffled = shuffled_words(text, random.Random(0))
    assert shuffled != text and sorted(shuffled.split()) == sorted(text.split())
    assert shuffled_words("same same", random.Random(0)) == "same same"


@pytest.mark.slow
def test_the_measuring_script_prints_the_measures_of_the_datasheet(judge, monkeypatch, capsys):
    """scripts/measure_instruments.py: what data/judge_eval/README.md quotes, as JSON."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / "measure_instruments.py"
    spec = importlib.util.spec_from_file_location("measure_instruments", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "default_judge", lambda: judge)  # the session's, fitted the same way
    measures = script.main()
    printed = json.loads(capsys.readouterr().out)
    assert printed["judge"]["texts"] == 144 and printed["gate"]["texts"] == 103
    assert set(measures["judge"]["recall"]) == {"anger", "sadness", "joy", "neutral"}
    assert 0.0 <= printed["gate"]["precision"] <= 1.0 and printed["judge"]["unscored"] == 0


@pytest.mark.slow
def test_with_its_host_the_judges_gate_adds_the_word_order_rule(judge):
    """The gate notebooks score generations with (irmlib.scoring.score_generations): word salad the
    rules and the probe let through is degenerate under the judge's own (embedded) host, and a
    short answer or a sentence is left as the gate without the host labels it."""
    salad, texts = "3 chambers, heart beating a chamber, blood.", ["Waterloo.", "A: Paris", "The Strait of Gibraltar connects them."]
    assert judge.gate([salad]) == ["fluent"]
    assert judge.gate([salad] + texts, host=judge.base_host) == ["degenerate"] + judge.gate(texts)
    labels, probabilities = judge.read([salad], host=judge.base_host)
    assert labels == ["degenerate"] and probabilities.isna().all().all()
