"""D. Mutated real reports never make `compare`, `report` or the gate raise anything but one line.

The sources are reports bnbench wrote (a `bnbench run` report, the harness's report and its
pytest-benchmark JSON, made on small synthetic data) and the committed ones in results/. Each
example mutates one of them (drops keys, changes types, nests wrongly, empties lists, inserts NaN
and Infinity, zero and negative times, truncates or garbles the text) and runs the commands on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from report_helpers import COMMITTED, as_pytest_benchmark, harness_report, made_report

from bnbench import cli
from bnbench.report import compare, reading

pytestmark = pytest.mark.slow  # long fuzzing

REPLACEMENTS = [None, True, 0, -1, 0.0, -2.5, 1e308, 5e-324, 10**30, "", "x", [], {}, [0.5, 0.5],
                math.nan, math.inf, -math.inf]
# Numbers the readers compute with, and values at the edges of what they can: zero and negative
# times, underflow, overflow, huge counts.
FIGURES = {"median", "iqr", "mean", "ci95", "n", "rounds", "seeds", "ratio", "updates_per_epoch", "time_s",
           "epochs", "updates"}
EXTREMES = [0, -1, -1e-3, 5e-324, 1e-300, 1e-10, 1e-9, 1e9, 1e305, 1.7e308, 10**300, 2, 1]
# A few seconds in all; no example database left in the checkout.
BASE = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _without_raw_timings(data: dict) -> dict:
    """pytest-benchmark's JSON without its per-round timings, which bnbench never reads: the
    mutations then land on what it does read."""
    for bench in data.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
    return data


@pytest.fixture(scope="module")
def sources() -> list[dict]:
    made = [made_report(), harness_report(), as_pytest_benchmark(harness_report())]
    return made + [_without_raw_timings(json.loads(p.read_text())) for p in COMMITTED]


def paths_in(value, path=()):
    """Every path in a JSON document, containers and leaves."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from paths_in(item, (*path, key))


def at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw, sources):
    """A source report's JSON text after one to three mutations."""
    doc = json.loads(json.dumps(draw(st.sampled_from(sources))))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(paths_in(doc))
        path = draw(st.sampled_from(paths[1:] or paths))
        op = draw(st.sampled_from(["drop", "replace", "nest", "empty", "swap", "extreme", "extreme"]))
        figures = [p for p in paths if p and p[-1] in FIGURES]
        if op == "extreme" and figures:
            path = draw(st.sampled_from(figures))
        value = at(doc, path) if path else doc
        if op == "drop" and path:
            del at(doc, path[:-1])[path[-1]]
            continue
        if op == "replace":
            new = draw(st.sampled_from(REPLACEMENTS))
        elif op == "extreme":
            new = draw(st.sampled_from(EXTREMES))
        elif op == "nest":
            new = draw(st.sampled_from([[value], {"value": value}]))
        elif op == "empty":
            new = type(value)() if isinstance(value, (dict, list)) else value
        else:
            new = at(doc, draw(st.sampled_from(paths)))
        if path:
            at(doc, path[:-1])[path[-1]] = json.loads(json.dumps(new))
        else:
            doc = new
    text = json.dumps(doc)  # NaN and Infinity come out as literals, as Python would write them
    edit = draw(st.sampled_from(["none"] * 4 + ["truncate", "garble"]))
    if edit == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif edit == "garble":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(["}", "]", ",", '"', "\\", "\x00", "é"])) + text[i:]
    return text


def run(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def assert_clean(status: int, err: str, allowed=(0, 1, 2)) -> None:
    assert status in allowed
    if status == 2:
        assert err.startswith("bnbench: error: ") and err.count("\n") == 1, err


def gateable(base: Path, later: Path) -> bool:
    """Whether the gate (``--gate auto``) could hold ``later`` to every figure ``base`` has: each
    variant, each kind of step time, and each accuracy (tested where the baseline has an interval,
    two or more seeds; named as not gated where it has none), on the same machine."""
    b, o = reading.load(base), reading.load(later)
    if reading.same_run(b, o) and b["kind"] != o["kind"]:
        return False  # merged into one report: nothing left to compare against
    if compare.machine(b) != compare.machine(o):
        return False
    for name, bv in b["variants"].items():
        ov = o["variants"].get(name)
        if ov is None or any(bv[k] and not ov[k] for k in reading.STEP_KINDS):
            return False
        if any(bv.get(k) and not ov.get(k) for k in reading.ACCURACIES):
            return False
    return True


@contextlib.contextmanager
def mutated_pair(sources: list[dict], data):
    """A folder holding one real report (base.json) and a mutation of it (later.json)."""
    index = data.draw(st.integers(0, len(sources) - 1))
    text = data.draw(mutated([sources[index]]))
    with tempfile.TemporaryDirectory() as folder:
        base, later = Path(folder) / "base.json", Path(folder) / "later.json"
        base.write_text(json.dumps(sources[index]))
        later.write_text(text)
        yield Path(folder), base, later


@settings(BASE, max_examples=60)
@given(data=st.data())
def test_compare_and_the_gate_on_mutated_reports(sources, data):
    with mutated_pair(sources, data) as (_, base, later):
        status, _, err = run("compare", later, "--format", "markdown")
        assert_clean(status, err, allowed=(0, 2))
        for first, second in ((base, later), (later, base)):
            status, out, err = run("compare", first, second, "--fail-on-regression", "10")
            assert_clean(status, err)
            if status == 0:  # the gate passed: it must have compared everything the baseline holds
                assert gateable(first, second), out


@settings(BASE, max_examples=10)
@given(data=st.data())
def test_report_on_mutated_reports(sources, data):
    with mutated_pair(sources, data) as (folder, base, later):
        status, _, err = run("report", base, later, "--out", folder / "cite")
        assert_clean(status, err, allowed=(0, 2))
