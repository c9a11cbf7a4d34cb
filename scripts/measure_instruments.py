"""Measure the emotion judge and the fluency gate on the test split of data/judge_eval, and on its
fresh set (tone_fresh.jsonl, gate_fresh.jsonl: held out from every choice; each reading is counted in the datasheet).

    python scripts/measure_instruments.py      prints the judge's and the gate's measures as JSON

The numbers in data/judge_eval/README.md ("The judge and the gate after the change" and "A fresh
set, read once" and "The judge's third revision: sadness") are this script's output: `irmlib.judge.default_judge()` (fitted on data/judge and
the dev split), scored by `irmlib.studies.data_sheet.judge_eval` and `gate_eval` (the gate with the
perplexity of the embedded host the judge reads with). The top-level
"judge" and "gate" are the test split's; "fresh" holds the fresh set's, with accuracy by source and
hard case and how hard its tone texts are (`tone_separability`, `length_only_accuracy`).
"""

from __future__ import annotations

import json

from irmlib.data import load_judge_eval
from irmlib.judge import default_judge
from irmlib.studies import data_sheet


def main() -> dict:
    judge = default_judge()
    tone = [row for row in load_judge_eval("tone") if row["split"] == "test"]
    gate = [row for row in load_judge_eval("gate") if row["split"] == "test"]
    fresh_tone, _ = data_sheet.eval_rows("fresh")
    texts, labels = [row["text"] for row in fresh_tone], [row["label"] for row in fresh_tone]
    measures = {"judge": data_sheet.judge_eval(judge, tone), "gate": data_sheet.gate_eval(judge, gate, tone, host=judge.base_host),
                "judge_cv_accuracy": judge.cv_accuracy,
                "fresh": {"judge": data_sheet.judge_eval(judge, by=("source", "hard_case"), split="fresh"),
                          "gate": data_sheet.gate_eval(judge, split="fresh", host=judge.base_host),
                          "hardness": {"texts": len(texts),
                                       "bag_of_words": data_sheet.tone_separability(texts, labels),
                                       "word_count_only": data_sheet.length_only_accuracy(labels, [len(t.split()) for t in texts])}}}
    print(json.dumps(measures, indent=1, default=str))
    return measures


if __name__ == "__main__":
    main()
