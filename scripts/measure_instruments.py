"""Measure the emotion judge and the fluency gate on the test split of data/judge_eval.

    python scripts/measure_instruments.py      prints the judge's and the gate's measures as JSON

The numbers in data/judge_eval/README.md ("The judge and the gate after the change") are this
script's output: `irmlib.judge.default_judge()` (fitted on data/judge and the dev split), scored
by `irmlib.studies.data_sheet.judge_eval` and `gate_eval`.
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
    measures = {"judge": data_sheet.judge_eval(judge, tone), "gate": data_sheet.gate_eval(judge, gate, tone),
                "judge_cv_accuracy": judge.cv_accuracy}
    print(json.dumps(measures, indent=1, default=str))
    return measures


if __name__ == "__main__":
    main()
