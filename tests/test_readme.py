"""README's numbers, each checked at the source it names.

Every number README quotes from a run or a command has a row in figures/cpu/readme_numbers.tsv:
the README section it sits in, the quote as printed, its source, the path to the value there and how
the value is rounded to the quote. Rows are in the order their quotes appear in the section. In
"What the default run found" and "What the regime map found" every decimal number (a point, a
thousands comma or a percent sign) must have a row; elsewhere rows cover what they cover (the
plan's numbers).

Sources:
  metrics.json                       figures/cpu/metrics.json
  notebooks/<name>.ipynb             a committed notebook, read as JSON (its cells, outputs, sources)
  figures/<profile>/metrics.json     another committed JSON file, by its path
  <commit>:<path>                    a JSON file as committed at an earlier commit (git show)
  ./reproduce.sh plan --profile ...  what irmlib.plan prints for that command, run in-process
Several sources or paths joined by " & " must each hold the quote (one source or one path serves all).

Paths into JSON: `.key` (`["key"]` where the key holds a dot), `[3]` (a list index),
`[field=value,...]` (the one element of a list of dicts whose fields are these; `field~=text`: whose
field contains the text, which holds no comma or bracket),
and on an HTML table (a notebook's text/html output) `[row=...,column=...]`. Paths into the plan's
text: `<label>[k]`, the k-th number after the label on the first line that starts with it.

Rounding: `N decimals` (round(value, N) equals the quote, printed with N decimals), `abs, N decimals`,
`percent, N decimals` (100 x value), or `after "<text>"`: the value is a text that holds <text>
followed by the quote as printed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
TABLE = ROOT / "figures" / "cpu" / "readme_numbers.tsv"
FINDINGS = "What the default run found"
REGIME_FINDINGS = "What the regime map found"
PLAN = "./reproduce.sh plan"

NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")


def numbers(text: str) -> list[str]:
    """The numbers a reader sees in `text`, as printed ('0.34', '+0.2326', '14,309', '1.25%', '412').
    Digits that are part of a word are not numbers ('top-5', 'SmolLM2', 'Llama-2-7b', '1e-4',
    '20261129T231529', '7fb7601'); a multiplier's x is not a letter here ('30x', 'x20')."""
    found = []
    for match in NUMBER.finditer(text):
        start, end = match.span()
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if match.group()[0] in "+-":
            if before.isalnum() or before in "_.":  # a hyphen inside a word, not a sign
                continue
        elif (before.isalnum() and before != "x") or before in "_.-":
            continue
        if (after.isalnum() and after != "x") or after == "_":
            continue
        found.append(match.group())
    return found


def is_decimal(quote: str) -> bool:
    return any(c in quote for c in ".,%")


def sections(text: str) -> dict[str, str]:
    """README's `## ` sections by heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


@dataclass(frozen=True)
class Row:
    section: str
    quote: str
    source: str
    path: str
    rounding: str

    def checks(self) -> list[tuple[str, str]]:
        """(source, path) pairs that must each hold the quote."""
        sources = self.source.split(" & ")
        paths = self.path.split(" & ")
        if len(paths) == 1:
            paths = paths * len(sources)
        if len(sources) == 1:
            sources = sources * len(paths)
        if len(paths) != len(sources):
            raise ValueError(f"{self.quote}: {len(sources)} sources but {len(paths)} paths")
        return list(zip(sources, paths))


def read_rows(path: Path = TABLE) -> list[Row]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader)
    assert header == ["section", "quote", "source", "path", "rounding"], header
    rows = []
    for fields in reader:
        assert len(fields) == 5, f"a row of {TABLE.name} needs 5 tab-separated fields: {fields}"
        rows.append(Row(*fields))
    return rows


# Sources.

def text_of(value) -> str:
    """A notebook's multi-line strings are lists of lines in its JSON."""
    return "".join(value) if isinstance(value, list) else value


class _Table(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_cell(html: str, row: str, column: str) -> str:
    """A cell of the first HTML table in `html` (a pandas DataFrame's text/html), by row label and column name."""
    table = _Table()
    table.feed(html)
    header, *body = table.rows
    labelled = [r for r in body if r and r[0] == row]
    assert len(labelled) == 1, f"table row {row!r}: {len(labelled)} found"
    return labelled[0][header.index(column)]


SEGMENT = re.compile(r'\.?([^.\[\]]+)|\[([^\]]*)\]')


def resolve(value, path: str):
    """The value at `path` (module docstring) in parsed JSON."""
    position = 0
    for match in SEGMENT.finditer(path):
        assert match.start() == position, f"cannot read path {path!r} at {path[position:]!r}"
        position = match.end()
        key, bracket = match.groups()
        if key is not None:
            value = value[key]
        elif bracket.startswith('"') and bracket.endswith('"'):
            value = value[bracket[1:-1]]
        elif re.fullmatch(r"-?\d+", bracket):
            value = value[int(bracket)]
        else:
            wanted = [re.match(r"([^=~]+)(~?=)(.*)", part).groups() for part in bracket.split(",")]
            if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                fields = {k: v for k, _, v in wanted}  # a cell of an HTML table
                assert "<table" in text_of(value) and set(fields) == {"row", "column"}, f"{path!r}: [{bracket}] on a text"
                value = html_cell(text_of(value), fields["row"], fields["column"])
                continue

            def fits(item) -> bool:
                return all(isinstance(item, dict) and k in item and
                           (v in text_of(item[k]) if op == "~=" else str(text_of(item[k])) == v) for k, op, v in wanted)
            matches = [item for item in value if fits(item)]
            assert len(matches) == 1, f"{path!r}: [{bracket}] selects {len(matches)} elements, not one"
            value = matches[0]
    assert position == len(path), f"cannot read path {path!r} at {path[position:]!r}"
    return value


def plan_text(command: str) -> str:
    """What `./reproduce.sh plan ...` prints, from irmlib.plan.main in this process."""
    from irmlib.plan import main

    assert command.startswith(PLAN), command
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(shlex.split(command[len(PLAN):]))
    return out.getvalue()


def plan_number(text: str, path: str) -> float:
    label, k = re.fullmatch(r"(.+)\[(-?\d+)\]", path).groups()
    line = next((line.strip() for line in text.splitlines() if line.strip().startswith(label)), None)
    assert line is not None, f"no line of the plan starts with {label!r}"
    found = re.findall(r"\d+(?:\.\d+)?", line[len(label):].replace(",", ""))
    return float(found[int(k)])


class Sources:
    """Each source read once."""

    def __init__(self):
        self._cache: dict[str, object] = {}

    def get(self, source: str):
        if source not in self._cache:
            if source == "metrics.json":
                self._cache[source] = json.loads((ROOT / "figures" / "cpu" / "metrics.json").read_text())
            elif source.startswith(PLAN):
                self._cache[source] = plan_text(source)
            elif re.fullmatch(r"[0-9a-f]{7,40}:.+", source):
                self._cache[source] = json.loads(subprocess.run(["git", "-C", str(ROOT), "show", source], check=True,
                                                                capture_output=True, text=True).stdout)
            else:
                self._cache[source] = json.loads((ROOT / source).read_text())
        return self._cache[source]

    def value(self, source: str, path: str):
        if source.startswith(PLAN):
            return plan_number(self.get(source), path)
        return resolve(self.get(source), path)


def is_commit(source: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{7,40}:.+", source) is not None


def commit_available(source: str) -> bool:
    commit = source.split(":", 1)[0]
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    except FileNotFoundError:  # no git on this machine
        return False
    return result.returncode == 0


# The checker.

def agrees(quote: str, value, rounding: str) -> bool:
    """Whether `value` printed by `rounding` is `quote` (module docstring)."""
    after = re.fullmatch(r'after "(.*)"', rounding)
    if after:
        return isinstance(value, (str, list)) and after.group(1) + quote in text_of(value)
    how = re.fullmatch(r"(abs, |percent, )?(\d+) decimals?", rounding)
    if how is None:
        raise ValueError(f"unknown rounding {rounding!r}")
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
        value = float(value)  # a cell of a notebook's HTML table
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    kind, digits = how.group(1) or "", int(how.group(2))
    number = quote.rstrip("%").replace(",", "")
    printed = len(number.split(".")[1]) if "." in number else 0
    if printed != digits or (kind == "percent, " and not quote.endswith("%")):
        return False
    value = abs(value) if kind == "abs, " else 100 * value if kind == "percent, " else value
    return round(float(value), digits) == float(number)


def wrong_quotes(rows: list[Row], sources: Sources, keep=lambda source: True) -> list[str]:
    """Rows whose quote is not what their source holds, as messages."""
    wrong = []
    for row in rows:
        for source, path in row.checks():
            if not keep(source):
                continue
            try:
                value = sources.value(source, path)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError, AssertionError,
                    subprocess.CalledProcessError) as err:
                wrong.append(f"{row.quote}: {source} has no {path} ({type(err).__name__}: {err})")
                continue
            if not agrees(row.quote, value, row.rounding):
                wrong.append(f"{row.quote}: {source} {path} is {value!r}, which '{row.rounding}' does not print as {row.quote}")
    return wrong


def unmatched(text: str, rows: list[Row], every_decimal: bool) -> list[str]:
    """Walk the numbers of a section and the rows in order: a number equal to the next row's quote
    is that row's. A decimal number that is not the next row's quote is a later row's (the rows
    before it were not found) or, with `every_decimal`, a number without a row. Rows left over were
    not found in the section in their order."""
    pending = list(rows)
    problems = []

    def missing(row: Row) -> str:
        return f"row {row.quote} ({row.source} {row.path}) not found in the section in its order"

    for number in numbers(text):
        if pending and number == pending[0].quote:
            pending.pop(0)
        elif is_decimal(number) and number in [row.quote for row in pending]:
            skipped = [row.quote for row in pending].index(number)
            problems += [missing(row) for row in pending[:skipped]]
            pending = pending[skipped + 1:]
        elif every_decimal and is_decimal(number):
            expected = f" (the next row quotes {pending[0].quote})" if pending else ""
            problems.append(f"{number} has no row{expected}")
    return problems + [missing(row) for row in pending]


# The tests.

@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return read_rows()


@pytest.fixture(scope="module")
def readme() -> dict[str, str]:
    return sections(README.read_text())


@pytest.fixture(scope="module")
def sources() -> Sources:
    return Sources()


def test_every_number_of_the_findings_has_a_row_in_order(rows, readme):
    assert FINDINGS in readme and REGIME_FINDINGS in readme
    by_section: dict[str, list[Row]] = {}
    for row in rows:
        assert row.section in readme, f"row {row.quote}: README has no section '{row.section}'"
        by_section.setdefault(row.section, []).append(row)
    assert sum(is_decimal(n) for n in numbers(readme[FINDINGS])) > 50, "the findings quote numbers"
    problems = {name: unmatched(readme[name], section_rows, every_decimal=name in (FINDINGS, REGIME_FINDINGS))
                for name, section_rows in by_section.items()}
    assert not any(problems.values()), problems


def test_readme_findings_quote_the_committed_run(rows, sources):
    """Every quote agrees with the committed file its row names (metrics.json, a notebook)."""
    checked = [row for row in rows if not any(is_commit(s) or s.startswith(PLAN) for s, _ in row.checks())]
    assert len(checked) > 50
    assert not (wrong := wrong_quotes(checked, sources)), "\n".join(wrong)


def test_readme_quotes_of_the_previous_run_agree_with_its_metrics(rows, sources):
    """Rows that compare with the previous committed run read its metrics.json from git."""
    earlier = {s for row in rows for s, _ in row.checks() if is_commit(s)}
    assert earlier, "the findings compare with the previous run"
    missing = sorted(s for s in earlier if not commit_available(s))
    if missing:
        pytest.skip(f"this checkout's history lacks {missing} (a shallow clone)")
    assert not (wrong := wrong_quotes(rows, sources, keep=is_commit)), "\n".join(wrong)


def test_readme_plan_numbers_are_what_the_quoted_commands_print(rows, sources):
    """Each `./reproduce.sh plan ...` command README quotes is run (irmlib.plan.main, in-process)
    and every number README quotes from it is checked against its output."""
    text = README.read_text()
    commands = {" ".join(m.split()) for m in re.findall(r"`(\./reproduce\.sh plan[^`]*)`", text)}
    assert commands, "README quotes the plan"
    quoted_from = {s for row in rows for s, _ in row.checks() if s.startswith(PLAN)}
    assert quoted_from == commands, f"README quotes {sorted(commands)}; the table reads {sorted(quoted_from)}"
    plan_rows = [row for row in rows if any(s.startswith(PLAN) for s, _ in row.checks())]
    assert not (wrong := wrong_quotes(plan_rows, sources)), "\n".join(wrong)
    for command in commands:
        sources.get(command)  # every quoted command runs


def test_the_checker_refuses_a_quote_that_its_path_does_not_hold(tmp_path, sources):
    # Read at a fixed commit (run 20261129T231529's files, as committed at f048290): a republished
    # run leaves this test as it is.
    metrics, notebook = "f048290:figures/cpu/metrics.json", "f048290:notebooks/06_mechanism.ipynb"
    if not commit_available(metrics):
        pytest.skip("this checkout's history lacks commit f048290 (a shallow clone)")
    good = [Row(FINDINGS, "0.34", metrics, "04_vertical_continuity.index_share_mean", "2 decimals"),
            Row(FINDINGS, "+0.2326", metrics, "03_generations.per_emotion[emotion=anger,mode=greedy].p_target_change", "4 decimals"),
            Row(FINDINGS, "1.25%", metrics, "02_precision_check.anger-seed0.relative_difference", "percent, 2 decimals"),
            Row(FINDINGS, "14,309", metrics, "04_vertical_continuity.host_massive_ratio", "0 decimals"),
            Row(FINDINGS, "1.543", metrics, '05_lm_head_probing.nudge_kl.IRM dominant["16.0"]', "3 decimals"),
            Row(FINDINGS, "66%", metrics, "03_generations.per_emotion[emotion=neutral,mode=greedy].text", 'after "degenerate: "'),
            Row(FINDINGS, "18.5", notebook,
                "cells[source~=prediction_ranks].outputs[0].data[\"text/html\"][row=b_final_norm_gain,column=median rank in arm A]",
                "1 decimals")]
    assert not wrong_quotes(good, sources)
    wrong = [Row(FINDINGS, "0.35", metrics, "04_vertical_continuity.index_share_mean", "2 decimals"),  # another value
             Row(FINDINGS, "0.337", metrics, "04_vertical_continuity.index_share_mean", "2 decimals"),  # other rounding
             Row(FINDINGS, "-0.2326", metrics, "03_generations.per_emotion[emotion=anger,mode=greedy].p_target_change", "4 decimals"),
             Row(FINDINGS, "0.2326", metrics, "03_generations.per_emotion[emotion=anger,mode=sampled].p_target_change", "4 decimals"),
             Row(FINDINGS, "1.26%", metrics, "02_precision_check.anger-seed0.relative_difference", "percent, 2 decimals"),
             Row(FINDINGS, "67%", metrics, "03_generations.per_emotion[emotion=neutral,mode=greedy].text", 'after "degenerate: "'),
             Row(FINDINGS, "3", notebook,
                 "cells[source~=prediction_ranks].outputs[0].data[\"text/html\"][row=b_final_norm_gain,column=median rank in arm A]",
                 "0 decimals"),
             Row(FINDINGS, "0.34", metrics, "04_vertical_continuity.no_such_key", "2 decimals"),
             Row(FINDINGS, "0.34", metrics, "03_generations.per_emotion[emotion=anger].p_target_change", "2 decimals")]  # two rows
    assert len(wrong_quotes(wrong, sources)) == len(wrong)
    # One bad source among several fails the row.
    both = Row(FINDINGS, "412", f"{metrics} & f048290:notebooks/05_lm_head_probing.ipynb",
               "04_vertical_continuity.runs.anger-seed0.dominant_index & cells[0].source", "0 decimals")
    assert len(wrong_quotes([both], sources)) == 1
    # A decimal without a row, and a row whose quote is not in the text, are reported.
    rows = [Row(FINDINGS, "0.34", metrics, "04_vertical_continuity.index_share_mean", "2 decimals")]
    assert unmatched("index share 0.34 against 0.08 in 6 runs", rows, every_decimal=True) == ["0.08 has no row"]
    assert unmatched("index share 0.08 in 6 runs", rows, every_decimal=False)[0].startswith("row 0.34")
    assert not unmatched("index share 0.34 in 6 runs", rows, every_decimal=True)
    # A number missing from the text costs its own row only.
    two = rows + [Row(FINDINGS, "0.08", metrics, "04_vertical_continuity.layer_share_mean", "2 decimals")]
    assert len(unmatched("layer share 0.08", two, every_decimal=True)) == 1


def test_numbers_reads_what_a_reader_sees():
    text = ("SmolLM2-135M, Llama-2-7b, top-5 0.09, seed 0 at lr 1e-4, run 20261129T231529 at 7fb7601: "
            "+0.2326 (-0.14), 14,309 x, 30x, x20 the base's, 1.25% apart, 412, 45 and 0.97.")
    assert numbers(text) == ["0.09", "0", "+0.2326", "-0.14", "14,309", "30", "20", "1.25%", "412", "45", "0.97"]


def test_the_plan_states_the_rate_of_the_irm_fp32_products():
    """The plan's hours put the IRM's fp32 products at the fp32 peak (no TF32, as irmlib trains) and,
    as the paper's code ran them (float32 matmul precision "medium"), at the TF32 peak where the
    GPU has one."""
    from irmlib.plan import GPUS, KNOWN_HOSTS, TF32_NOTE, Options, epoch_flops, hours, report
    from irmlib.profile import load_profile

    text = report(load_profile("paper"), 2)
    assert "\n".join(f"  {line}" for line in TF32_NOTE) in text
    assert "no TF32" in TF32_NOTE[0] and 'set_float32_matmul_precision("medium")' in " ".join(TF32_NOTE)
    header = next(line for line in text.splitlines() if line.strip().startswith("GPU"))
    assert "TF32: per epoch" in header
    flops = epoch_flops(load_profile("paper"), KNOWN_HOSTS["meta-llama/Llama-2-7b-chat-hf"], 1000, 100)
    by_name = {gpu.name: gpu for gpu in GPUS}
    for name in ("A100 80GB", "H100 SXM"):
        assert hours(flops, by_name[name], tf32=True) < hours(flops, by_name[name]) / 2  # TF32 is several times fp32
    assert by_name["T4"].peak_tf32_tflops is None and hours(flops, by_name["T4"], tf32=True) == hours(flops, by_name["T4"])
    mixed = Options(mixed_precision=True)  # the IRM's products in bf16: TF32 changes nothing
    assert hours(flops, by_name["H100 SXM"], options=mixed, tf32=True) == hours(flops, by_name["H100 SXM"], options=mixed)
