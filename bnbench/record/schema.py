"""The reports bnbench reads, checked once on load into their model; their JSON Schemas, generated.

bnbench reads two kinds of file: its own reports (``kind: "bnbench.run"``, written by ``bnbench run``
and by the pytest harness; ``kind: "bnbench.sweep"``, by ``bnbench sweep``) and pytest-benchmark's
JSON of a harness session (only the parts bnbench reads: ``machine_info.bnbench`` and the
``extra_info`` and ``stats`` of bnbench's benchmarks). They are declared once, as the typed models
of ``record.model``. ``validate`` checks a parsed file once, on load: strict JSON (finite numbers,
valid text), the kind, the model, and the few invariants a model does not state; it returns the
report as its model. Everything that reads a report afterwards trusts the types. Anything wrong is
one line naming the field's JSON path and what was expected there.

``python -m bnbench.record.schema [KIND]`` prints a kind's JSON Schema (generated from the model),
``--write DIR`` writes bnbench's own kinds' to ``DIR/KIND.json`` (docs/schema/, committed for other tools).
"""

from __future__ import annotations

import json
import math
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from bnbench.record import model
from bnbench.record.io import atomic_write
from bnbench.record.model import PROTOCOL_KEYS, REPORT_KIND, SCHEMA_VERSION, SWEEP_KIND

__all__ = ["PROTOCOL_KEYS", "REPORT_KIND", "SCHEMA_VERSION", "SWEEP_KIND", "PYTEST_BENCHMARK", "KINDS", "MODELS",
           "Invalid", "validate", "check", "json_schema", "schema_text"]

PYTEST_BENCHMARK = "pytest-benchmark"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
# The kinds of bnbench's own reports, by their `kind` field, and every kind's model.
KINDS = {REPORT_KIND: model.RunReport, SWEEP_KIND: model.SweepReport}
MODELS: dict[str, type[BaseModel]] = {**KINDS, PYTEST_BENCHMARK: model.PytestBenchmark}
# Where docs/schema/ is: the committed JSON Schemas of bnbench's own kinds.
DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema"


class Invalid(Exception):
    """What is wrong with a report, in one line (without the file's name)."""


def validate(raw) -> str:
    """Checks a parsed report once; returns its kind (a key of MODELS) or raises Invalid."""
    return check(raw)[0]


def check(raw) -> tuple[str, BaseModel]:
    """Checks a parsed report once: its kind and the report as that kind's model, or Invalid."""
    problem = strict_json_problem(raw)
    if problem:
        raise Invalid(problem)
    kind = kind_of(raw)
    if kind in KINDS:
        _check_version(raw.get("schema_version"))
    report = _convert(MODELS[kind], raw)
    if kind == PYTEST_BENCHMARK:
        _check_benchmarks(report)
    _check_epochs(report)
    if kind == REPORT_KIND:
        _check_summary(report)
    return kind, report


def _check_summary(report: model.RunReport) -> None:
    """A run report's summary describes its runs: one entry per variant trained, each over as many
    seeds as the protocol's, and each of those seeds a run of that variant."""
    if not report.runs:
        raise Invalid("runs: empty; expected the runs the summary describes")
    seeds = sorted(report.protocol.seeds)
    by_variant: dict[str, list[int]] = {}
    for run in report.runs:
        by_variant.setdefault(run.variant, []).append(run.seed)
    for name, entry in report.summary.items():
        if sorted(by_variant.get(name, [])) != seeds:
            raise Invalid(f"summary.{name}: its runs have seeds {sorted(by_variant.get(name, []))}, the protocol's "
                          f"are {seeds}: a summary entry needs one run per seed")
        if entry.seeds != len(seeds):
            raise Invalid(f"summary.{name}.seeds: {entry.seeds}, but the protocol has {len(seeds)} seeds")
    missing = sorted(set(by_variant) - set(report.summary))
    if missing:
        raise Invalid(f"summary: missing {missing[0]!r}, a variant of the runs")


def _convert(cls: type[BaseModel], value, where: tuple = ()) -> BaseModel:
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        raise Invalid(describe(e, cls, where)) from None


def kind_of(raw) -> str:
    if not isinstance(raw, dict):
        raise Invalid("not a bnbench or pytest-benchmark report (the top level is not an object)")
    if "kind" in raw:
        if not isinstance(raw["kind"], str) or raw["kind"] not in KINDS:
            raise Invalid(f"kind {_short(raw['kind'])} is not one this bnbench reads ({', '.join(KINDS)}): "
                          "upgrade bnbench?")
        return raw["kind"]
    if "benchmarks" in raw and "machine_info" in raw:
        if not isinstance(raw["machine_info"], dict) or "bnbench" not in raw["machine_info"]:
            raise Invalid("a pytest-benchmark file, but not from bnbench's benchmarks (no machine_info.bnbench)")
        return PYTEST_BENCHMARK
    raise Invalid("not a bnbench or pytest-benchmark report (no 'kind' or 'benchmarks' field)")


def _check_version(version) -> None:
    # Before the model, so that a newer report says "upgrade" rather than naming a field.
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise Invalid(f"written with schema_version {version}, newer than this bnbench reads ({SCHEMA_VERSION}): "
                      "upgrade bnbench")


def _check_benchmarks(report: model.PytestBenchmark) -> None:
    """Each benchmark bnbench tagged (``extra_info.bnbench``) holds what its tag's model declares,
    and its stats where bnbench reads them; the model is kept as the benchmark's ``info`` (and
    ``step_stats``). Benchmarks of other tags, or none, are left alone."""
    for i, bench in enumerate(report.benchmarks):
        tagged = model.TAGGED.get(bench.tag)
        if tagged is None:
            continue
        info, stats = tagged
        bench._info = _convert(info, bench.extra_info.dump(), ("benchmarks", i, "extra_info"))
        if stats is not None:
            if bench.stats is None:
                raise Invalid(f"{json_path(('benchmarks', i, 'stats'))}: missing; expected {stats.__doc__}")
            bench._stats = _convert(stats, bench.stats, ("benchmarks", i, "stats"))


def strict_json_problem(raw) -> str | None:
    """The first number that is not finite (a NaN or Infinity literal, or one out of a double's range)
    or string that is not valid Unicode, by its JSON path; None if there is none. Walked without
    recursion, since a damaged file may nest deeply."""
    stack = [((), raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                if not _valid_text(key):
                    return f"{json_path(path)}: a key is not valid Unicode text"
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, i), item) for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{json_path(path)}: {json.dumps(value)} is not a JSON number: expected a finite number or null"
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
            return f"{json_path(path)}: a whole number beyond a double's range: expected a finite number"
        elif isinstance(value, str) and not _valid_text(value):
            return f"{json_path(path)}: not valid Unicode text"
    return None


def _valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")  # lone surrogates (from \ud800 escapes) cannot be printed or written
        return True
    except UnicodeEncodeError:
        return False


def _check_epochs(report: BaseModel) -> None:
    """Every run holds one record per epoch of its protocol (or its config), with its accuracies up
    to where it diverged, if it did, and its test accuracy if it did not (a model cannot relate
    two fields)."""
    if isinstance(report, model.PytestBenchmark):
        groups = [(("benchmarks", i, "extra_info", "runs"), b.info.runs, b.info.protocol)
                  for i, b in enumerate(report.benchmarks) if isinstance(b.info, model.AccuracyInfo)]
    else:
        groups = [(("runs",), report.runs, report.protocol)]
    for path, runs, protocol in groups:
        for i, run in enumerate(runs):
            where, expected = (*path, i), (run.config or protocol).epochs
            source = "config.epochs" if run.config is not None else "protocol.epochs"
            if len(run.epochs) != expected:
                raise Invalid(f"{json_path((*where, 'epochs'))}: expected {expected} epoch records "
                              f"({source}), got {len(run.epochs)}")
            diverged = run.diverged.epoch if run.diverged is not None else expected + 1
            for j, record in enumerate(run.epochs[:diverged - 1]):
                for key in ("train_accuracy", "val_accuracy"):
                    if getattr(record, key) is None:
                        raise Invalid(f"{json_path((*where, 'epochs', j, key))}: missing; expected an accuracy "
                                      "between 0 and 1 (absent only from the epoch the run diverged in on)")
            if run.diverged is not None and run.test_accuracy is not None:
                raise Invalid(f"{json_path((*where, 'test_accuracy'))}: a diverged run has no test accuracy "
                              "(remove it, or the run's `diverged`)")
            if run.diverged is None and run.test_accuracy is None:
                raise Invalid(f"{json_path((*where, 'test_accuracy'))}: missing; expected an accuracy between "
                              "0 and 1 (or the run's `diverged`)")


def json_path(path) -> str:
    """``summary.seed_bn.val_accuracy.ci95``, ``runs[0].epochs[1].time_s``; keys that are not plain
    names are quoted, so that the message stays on one line."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(top level)"


def _short(value) -> str:
    """A value as it would read in the file, cut short; always one line."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bare(annotation):
    """``annotation`` without Annotated and None: the type a value there has."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            others = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation


def _described(annotation) -> str | None:
    """What a value of ``annotation`` is, in words: its Field's description, or its model's."""
    nullable = False
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            for meta in typing.get_args(annotation)[1:]:
                if getattr(meta, "description", None):
                    return meta.description + " or null" * nullable
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            others = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = nullable or len(others) < len(typing.get_args(annotation))
            if len(others) != 1:
                return None
            annotation = others[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            doc = (annotation.__doc__ or "").strip()
            return doc + " or null" * (nullable and not doc.endswith(" or null")) if doc else None
        else:
            return None


def expected_at(cls: type[BaseModel], loc) -> str | None:
    """What ``cls`` declares at the path ``loc``, in words (the description of the field, or of the
    item or value of a list or object); None where it declares nothing."""
    annotation, text = cls, _described(cls)
    for part in loc:
        bare = _bare(annotation)
        origin, args = typing.get_origin(bare), typing.get_args(bare)
        if isinstance(bare, type) and issubclass(bare, BaseModel) and isinstance(part, str):
            field = bare.model_fields.get(part)
            if field is None:
                return None
            annotation = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            text = field.description or _described(annotation)
        elif origin is list and isinstance(part, int):
            annotation = args[0]
            text = _described(annotation)
        elif origin is dict and isinstance(part, str):
            annotation = args[1]
            text = _described(annotation)
        else:
            return None
    return text


def describe(error: ValidationError, cls: type[BaseModel], where: tuple = ()) -> str:
    """One line: the JSON path of the field, what was expected there, and what the file holds. Of
    several errors, the one nearest the top (as the first where several are as near)."""
    first = min(error.errors(include_url=False), key=lambda e: len(e["loc"]))
    loc, kind, value = first["loc"], first["type"], first.get("input")
    where = json_path((*where, *loc))
    wanted = expected_at(cls, loc) or first["msg"][0].lower() + first["msg"][1:]
    if kind == "missing":
        return f"{where}: missing; expected {wanted}"
    if kind in ("too_short", "too_long"):
        size = len(value)
        return f"{where}: expected {wanted}, got {size} item{'s' * (size != 1)}"
    if kind == "value_error":  # the one value check a type cannot state: seeds named once
        return f"{where}: expected no repeated items, got {_short(value)}"
    return f"{where}: expected {wanted}, got {_short(value)}"


class _Generate(GenerateJsonSchema):
    """Pydantic's JSON Schema, without a title for every field (the descriptions say what they are)
    and without defaults: a field a report lacks is absent, not null (``Count = None`` is not a
    nullable count)."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def default_schema(self, schema):
        return self.generate_inner(schema["schema"])


def json_schema(kind: str) -> dict:
    """The JSON Schema (Draft 2020-12) of a report kind, generated from its model."""
    if kind != PYTEST_BENCHMARK:
        generated = MODELS[kind].model_json_schema(schema_generator=_Generate)
        return {"$schema": DRAFT, "$id": f"{kind}.json", **generated}
    # pytest-benchmark's JSON: each tagged benchmark's extra_info (and stats) by its tag, as
    # _check_benchmarks checks them, stated as if/then.
    tagged = [m for pair in model.TAGGED.values() for m in pair if m is not None]
    _, defs = models_json_schema([(m, "validation") for m in [model.PytestBenchmark, *tagged]],
                                 schema_generator=_Generate)
    defs = defs["$defs"]
    root = defs.pop(model.PytestBenchmark.__name__)
    conditions = []
    for tag, (info, stats) in model.TAGGED.items():
        then = {"properties": {"extra_info": {"$ref": f"#/$defs/{info.__name__}"}}}
        if stats is not None:
            then = {"required": ["stats"], "properties": {**then["properties"],
                                                          "stats": {"$ref": f"#/$defs/{stats.__name__}"}}}
        conditions.append({"if": {"required": ["extra_info"], "properties": {"extra_info": {
            "required": ["bnbench"], "properties": {"bnbench": {"const": tag}}}}}, "then": then})
    defs[model.Benchmark.__name__]["allOf"] = conditions
    return {"$schema": DRAFT, "$id": f"{kind}.json", **root, "$defs": defs}


def schema_text(kind: str) -> str:
    """A kind's JSON Schema as docs/schema/KIND.json holds it."""
    return json.dumps(json_schema(kind), indent=2) + "\n"


def write_documents(folder: Path) -> list[Path]:
    """bnbench's own kinds' JSON Schemas into ``folder``/KIND.json; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = folder / f"{kind}.json"
        atomic_write(path, lambda f, kind=kind: f.write(schema_text(kind)))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """``python -m bnbench.record.schema [KIND]``: the JSON Schema of a report kind, for other tools;
    ``--write DIR``: bnbench's own kinds' into ``DIR/KIND.json``."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        try:
            written = write_documents(Path(argv[1]))
        except OSError as e:
            print(f"bnbench: error: cannot write the schemas into {argv[1]} ({e.strerror or e}): name a writable "
                  "folder", file=sys.stderr)
            return 2
        for path in written:
            print(path)
        return 0
    kind = argv[0] if argv else REPORT_KIND
    if kind not in MODELS or len(argv) > 1:
        print(f"bnbench: error: no report kind {' '.join(argv)!r}: choose one of {', '.join(MODELS)} "
              "(or --write DIR)", file=sys.stderr)
        return 2
    print(schema_text(kind), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
