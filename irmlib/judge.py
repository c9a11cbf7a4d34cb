"""The emotion judge: a probability per emotion for a fluent text, none for any other.

It reads a text the way the embedded host (SmolLM2-135M-Instruct, whatever host a profile
trains) reads it when asked for its feeling: the text followed by `JUDGE_PROMPT`, through the
host's first `JUDGE_LAYER` decoder layers, the residual state averaged twice: over every token but
the first (which holds the host's massive activation), and over the prompt's own tokens, which have
read the text in order to name its feeling. A logistic regression on those states is fitted on data/judge
(posts, diaries, narration, messages, remarks, reviews and short answers) and on the dev split of
data/judge_eval/tone.jsonl (answers in the host's register); the test split of that file measures
it (`irmlib.studies.data_sheet.judge_eval`, `scripts/measure_instruments.py`, data/judge_eval/README.md).

The same states give the fluency gate its last rule: a probe fitted on the same training texts
against each with its words shuffled (a one-word text shuffles to itself) flags word salad that irmlib.gate's rules let through. Only
texts the gate calls fluent get probabilities: a too-short or degenerate text has NaN in every
column.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path
from .data import load_judge, load_judge_eval
from .gate import GateRules, gate_texts, shuffled_words
from .host import Host, cache_dir, load_host
from .inject import layer_output

JUDGE_PROMPT = "\nThe feeling in this answer, in one word:"
JUDGE_LAYER = 16  # of the embedded host's 30; chosen on the dev split (data/judge_eval/README.md)
JUDGE_C = 0.03  # inverse L2 strength of the logistic regressions on standardised states
NUMBERED_LIST = re.compile(r"(?:^|\s)\d+[.)]\s+\S+.*\s\d+[.)]\s")  # "1) solid 2) liquid"


class _Reached(Exception):
    """Raised by the hook on the last layer the judge reads: the rest of the host is not run."""


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, hidden]: the mean of `hidden` [batch, tokens, hidden] over the tokens `mask` [batch, tokens] keeps."""
    weights = mask.unsqueeze(-1).float()
    return (hidden * weights).sum(1) / weights.sum(1)


class HostReader:
    """The embedded host's reading of texts: `[n, 2 * hidden]`, the residual states after layer
    `layer` of text + JUDGE_PROMPT, averaged over its tokens after the first, then (the second
    `hidden` columns) over the prompt's tokens (those that start after the text; a token that
    straddles the two is the text's). A host of its own, float32 on the CPU, so no profile's host,
    precision or IRM hook ever touches the judge."""

    def __init__(self, host: Host | None = None, layer: int = JUDGE_LAYER):
        self.host = host or load_host(device="cpu", dtype=torch.float32)
        self.layer = layer

    @property
    def width(self) -> int:
        """Columns of a reading: the two averages of a hidden state."""
        return 2 * self.host.model.config.hidden_size

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        tokenizer, states = self.host.tokenizer, np.zeros((len(texts), self.width), np.float32)
        read: dict[str, torch.Tensor] = {}

        def stop(module, args, output):
            read["h"] = layer_output(output)
            raise _Reached

        hook = self.host.layers[self.layer - 1].register_forward_hook(stop)
        saved_side, tokenizer.padding_side = tokenizer.padding_side, "right"
        try:
            order = np.argsort([len(text) for text in texts], kind="stable")  # similar lengths batch with little padding
            for start in range(0, len(texts), batch_size):
                chosen = order[start:start + batch_size]
                batch = tokenizer([texts[i] + JUDGE_PROMPT for i in chosen], return_tensors="pt", padding=True,
                                  return_offsets_mapping=True)
                starts = batch.pop("offset_mapping")[..., 0]
                try:
                    self.host.model(**batch.to(self.host.device))
                except _Reached:
                    pass
                real = batch["attention_mask"].cpu().bool()
                after_first = real.clone()
                after_first[:, 0] = False
                prompt = real & (starts >= torch.tensor([len(texts[i]) for i in chosen]).unsqueeze(1))
                hidden = read["h"].float().cpu()
                states[chosen] = torch.cat([_masked_mean(hidden, after_first), _masked_mean(hidden, prompt)], dim=1).numpy()
        finally:
            hook.remove()
            tokenizer.padding_side = saved_side
        return states

    def cached(self, texts: list[str]) -> np.ndarray:
        """`self(texts)`, kept on disk under the cache directory for the same host, layer, prompt,
        torch version and texts: the judge's training texts (2,504, and as many shuffled) are read
        once per machine (about 85 s on 2 cores), not once per notebook."""
        key = json.dumps([self.host.name, self.layer, "text and prompt means", JUDGE_PROMPT, torch.__version__, texts])
        path = cache_dir() / "judge" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"
        try:
            states = np.load(path)
            if states.shape == (len(texts), self.width):
                return states
        except (OSError, ValueError):  # absent or damaged: read the texts again
            pass
        states = self(texts)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.save(handle, states)
        return states


@dataclass
class EmotionJudge:
    """The fluency gate's last rule and a probability per emotion for each fluent text."""

    reader: HostReader
    classifier: object  # sklearn Pipeline (StandardScaler, LogisticRegression): the emotion
    salad: object  # sklearn Pipeline: a text against its own words shuffled (1: shuffled)
    cv_accuracy: float  # on the judge's own training rows
    rules: GateRules = GateRules()  # the gate's thresholds (a profile's analysis.gate_rules())

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.classifier.classes_]

    @property
    def base_host(self) -> Host:
        """The host the judge reads with (the embedded base host, float32 on the CPU, never hooked):
        the one whose perplexity the gate's word-order rule was set and measured with."""
        return self.reader.host

    def read(self, texts: list[str], host: Host | None = None) -> tuple[list[str], pd.DataFrame]:
        """Each text's gate label and the [texts, emotions] probabilities, NaN in every column for
        a text the gate does not call fluent; the host reads each text once. `host`: the base host
        whose perplexity the gate uses (irmlib.gate.gate_texts); None: the gate without it."""
        texts = [str(text) for text in texts]
        labels, states = self._read(texts, host)
        table = pd.DataFrame(np.nan, index=range(len(texts)), columns=self.labels)
        fluent = [i for i, label in enumerate(labels) if label == "fluent"]
        if fluent:
            table.loc[fluent] = self.classifier.predict_proba(states[fluent])
        return labels, table

    def gate(self, texts: list[str], host: Host | None = None) -> list[str]:
        """The fluency gate for each text: irmlib.gate's rules, the word-order rule where `host` (the
        base host) is given, then word salad (see `_read`)."""
        return self._read([str(text) for text in texts], host)[0]

    def probabilities(self, texts: list[str]) -> pd.DataFrame:
        """[texts, emotions] probabilities; NaN in every column for a text the gate does not call fluent."""
        return self.read(texts)[1]

    def _read(self, texts: list[str], host: Host | None = None) -> tuple[list[str], np.ndarray]:
        """Gate labels (`gate_texts`: the rules, and the word-order rule under `host` where it is
        given), and the host's states of the texts they call fluent (zeros elsewhere).
        Such a text of `rules.salad_min_words` words or more that the probe reads as shuffled with
        probability `rules.salad_probability` or more (`self.rules`) is degenerate. Numbered lists are left to
        the rules: fitted on prose, the probe reads "1) solid 2) liquid 3) gas" as shuffled."""
        rules = self.rules
        labels = gate_texts(texts, rules, host)
        states = np.zeros((len(texts), self.reader.width), np.float32)
        read = [i for i, label in enumerate(labels) if label == "fluent"]
        if read:
            states[read] = self.reader([texts[i] for i in read])
            shuffled = self.salad.predict_proba(states[read])[:, 1]
            for i, probability in zip(read, shuffled):
                if (probability >= rules.salad_probability and len(texts[i].split()) >= rules.salad_min_words
                        and not NUMBERED_LIST.search(texts[i])):
                    labels[i] = "degenerate"
        return labels, states


def train_judge(rows: list[dict], folds: int = 5, seed: int = 0, reader: HostReader | None = None,
                rules: GateRules = GateRules()) -> EmotionJudge:
    """Fit the judge on rows (`text`, `label`) and report its cross-validated accuracy on them;
    fit the word-salad probe on the same texts against each shuffled once."""
    # Lazy: scikit-learn takes seconds to import and only the judge needs it.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def classifier():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=JUDGE_C))

    reader = reader or HostReader()
    texts = [row["text"] for row in rows]
    features = reader.cached(texts)
    labels = [row["label"] for row in rows]
    emotion = classifier()
    accuracy = cross_val_score(emotion, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean()
    rng = random.Random(seed)
    shuffled = reader.cached([shuffled_words(text, rng) for text in texts])
    salad = classifier().fit(np.vstack([features, shuffled]), [0] * len(texts) + [1] * len(texts))
    return EmotionJudge(reader, emotion.fit(features, labels), salad, float(accuracy), rules)


def default_judge(rules: GateRules = GateRules(), reader: HostReader | None = None) -> EmotionJudge:
    """The judge every notebook uses (`rules`: the profile's analysis.gate_rules()): fitted on
    data/judge and the dev split of data/judge_eval/tone.jsonl (its test split measures it)."""
    dev = [row for row in load_judge_eval("tone") if row["split"] == "dev"]
    return train_judge(load_judge() + dev, reader=reader, rules=rules)
