"""The declared JSON Schemas of the reports bnbench reads, and the one place they are checked.

bnbench reads two kinds of file: its own report (``kind: "bnbench.run"``, written by ``bnbench run``
and by the pytest harness) and pytest-benchmark's JSON of a harness session (only the parts bnbench
reads: ``machine_info.bnbench`` and the ``extra_info`` and ``stats`` of bnbench's benchmarks).
``validate`` checks a parsed file once, on load: strict JSON (finite numbers, valid text), the kind,
its schema (Draft 2020-12), and the few invariants a schema cannot state. Everything that reads a
report afterwards trusts the types. A new kind (say ``bnbench.sweep``) adds its schema to ``KINDS``
and a reader to ``reports.READERS``.

Objects allow additional properties, where future fields will appear; what readers use is required.
``python -m bnbench.record.schema [KIND]`` prints a schema as JSON.
"""

from __future__ import annotations

import functools
import json
import math
import sys

# What a report declares itself to be; written by runner.make_report, checked here.
SCHEMA_VERSION = 1
REPORT_KIND = "bnbench.run"
SWEEP_KIND = "bnbench.sweep"
PYTEST_BENCHMARK = "pytest-benchmark"
# What must be equal for two reports' accuracies and times to mean the same thing. The one place
# these are defined: every protocol must hold them, `compare` refuses reports that differ in them
# and `report` groups reports by them.
PROTOCOL_KEYS = ("dataset", "order", "train_examples", "validation_examples", "test_examples", "batch_size",
                 "optimizer", "learning_rate", "momentum", "epochs", "seeds")
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def _nullable(schema: dict, description: str | None = None) -> dict:
    text = (description or schema["description"]) + " or null"
    return {**schema, "type": [schema["type"], "null"], "description": text}


_STRING = {"type": "string", "description": "a string"}
_NUMBER = {"type": "number", "description": "a number"}
# Times are bounded by what a clock can measure and a run can last, so that every ratio, sum and
# plot of them stays finite (a time of 1e-320 s or 1e308 s is damage, not a measurement).
_TIME = {"type": "number", "minimum": 1e-9, "maximum": 1e9, "description": "a time in seconds from 1e-09 to 1e+09"}
_COUNT = {"type": "integer", "minimum": 1, "description": "a whole number >= 1"}
_SIZE = {"type": "integer", "minimum": 0, "description": "a whole number >= 0"}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1, "description": "an accuracy between 0 and 1"}
# A loss is null where training diverged: its NaN is written as null (every number written is finite).
_LOSS = _nullable(_NUMBER)

DEFS = {
    "spread": {
        "description": "a spread of times {median, iqr, min, max, n} in seconds",
        "type": "object", "required": ["median", "iqr", "n"],
        "properties": {"median": _TIME, "iqr": {**_NUMBER, "minimum": 0, "maximum": 1e9,
                                                "description": "a spread in seconds from 0 to 1e+09"},
                       "min": _NUMBER, "max": _NUMBER, "n": _COUNT},
    },
    "accuracy": {
        "description": "an accuracy over seeds {mean, std, ci95, n}",
        "type": "object", "required": ["mean", "std", "ci95", "n"],
        "properties": {
            "mean": _FRACTION, "std": _nullable({**_NUMBER, "minimum": 0}, "a number >= 0"), "n": _COUNT,
            # null with one seed: an interval needs two or more.
            "ci95": {"type": ["array", "null"], "items": _NUMBER, "minItems": 2, "maxItems": 2,
                     "description": "a 95% interval [low, high] or null"},
        },
    },
    "loss": {
        "description": "a loss over seeds {mean, std, ci95, n}",
        "type": "object",
        "properties": {"mean": _LOSS, "std": _LOSS, "n": _COUNT,
                       "ci95": {"type": ["array", "null"], "items": _LOSS,
                                "description": "a 95% interval [low, high] or null"}},
    },
    "environment": {
        "description": "the environment {backend, device_kind, device_count, cpu_model, ...}",
        "type": "object", "required": ["backend"],
        "properties": {
            "backend": _STRING, "device_kind": _STRING, "device_count": _COUNT, "process_count": _COUNT,
            "cpu_model": _nullable(_STRING), "cpu_count": _nullable(_COUNT), "usable_cores": _nullable(_COUNT),
            "cpu_flags": {"type": "array", "items": _STRING, "description": "a list of strings"},
            **{key: _nullable(_STRING) for key in ("python", "jax", "jaxlib", "flax", "optax", "bnbench",
                                                    "platform", "xla_flags", "matmul_precision",
                                                    "compilation_cache_dir", "git_commit")},
        },
    },
    "protocol": {
        "description": "the protocol {dataset, order, batch_size, learning_rate, epochs, seeds, ...}",
        "type": "object",
        "required": [*PROTOCOL_KEYS, "updates_per_epoch"],
        "properties": {
            "dataset": _STRING, "order": _STRING, "location": _nullable(_STRING),
            "source": {"enum": ["idx", "download", "tfds", "synthetic"],
                       "description": "one of idx, download, tfds, synthetic"},
            "verified": {"type": "boolean", "description": "true or false"},
            "train_examples": _COUNT, "validation_examples": _SIZE, "test_examples": _SIZE,
            "batch_size": _COUNT, "optimizer": _STRING,
            "learning_rate": {**_NUMBER, "exclusiveMinimum": 0, "description": "a number > 0"},
            "momentum": {**_NUMBER, "minimum": 0, "description": "a number >= 0"},
            "epochs": _COUNT, "updates_per_epoch": _COUNT,
            "image_shape": {"type": "array", "items": _COUNT, "minItems": 2, "maxItems": 3,
                            "description": "an image shape [height, width] or [height, width, channels]"},
            "seeds": {"type": "array", "items": {"type": "integer", "description": "a whole number"},
                      "minItems": 1, "uniqueItems": True, "description": "a list of seeds (whole numbers)"},
            # Absent in reports from before data-parallel training: one device.
            "data_parallel": {**_COUNT, "description": "the devices each batch was split over (a whole number >= 1)"},
            "batch_stats": {"enum": ["sync", "local"], "description": "sync or local"},
        },
    },
    # A diverged run's records from its diverging epoch on hold only the times (_check_epochs).
    "epoch": {
        "description": "an epoch's record {epoch, train_accuracy, val_accuracy, time_s, ...}",
        "type": "object", "required": ["epoch", "time_s"],
        "properties": {"epoch": _COUNT, "train_loss": _LOSS, "val_loss": _LOSS, "train_accuracy": _FRACTION,
                       "val_accuracy": _FRACTION, "time_s": _TIME, "floor_time_s": _nullable(_TIME)},
    },
    "run": {
        "description": "a run {variant, seed, epochs, test_accuracy or diverged, ...}",
        "type": "object", "required": ["variant", "seed", "epochs"],
        "properties": {"variant": _STRING, "seed": {"type": "integer", "description": "a whole number"},
                       "config": _ref("config"),
                       "epochs": {"type": "array", "items": _ref("epoch"), "minItems": 1,
                                  "description": "a list of epoch records"},
                       "test_loss": _LOSS, "test_accuracy": _FRACTION,
                       "diverged": {"type": "object", "required": ["epoch", "update"],
                                    "description": "where the loss first became NaN or infinite {epoch, update}",
                                    "properties": {"epoch": _COUNT, "update": _COUNT}},
                       "evals": {"type": "array", "description": "a list of evaluations {update, val_accuracy}",
                                 "items": {"type": "object", "required": ["update", "val_accuracy"],
                                           "description": "an evaluation {update, val_accuracy, val_loss}",
                                           "properties": {"update": _COUNT, "val_accuracy": _FRACTION,
                                                          "val_loss": _LOSS}}},
                       "compile_time_s": {**_NUMBER, "minimum": 0, "description": "a number >= 0"}},
    },
    "config": {
        "description": "a sweep's configuration {learning_rate, batch_size, bn_momentum, epochs, ...}",
        "type": "object", "required": ["learning_rate", "base_learning_rate", "batch_size", "bn_momentum", "epochs",
                                       "updates_per_epoch"],
        "properties": {"learning_rate": {**_NUMBER, "exclusiveMinimum": 0, "description": "a number > 0"},
                       "base_learning_rate": {**_NUMBER, "exclusiveMinimum": 0, "description": "a number > 0"},
                       "batch_size": _COUNT, "epochs": _COUNT, "updates_per_epoch": _COUNT,
                       "bn_momentum": {**_NUMBER, "minimum": 0, "exclusiveMaximum": 1,
                                       "description": "a number from 0 to below 1"}},
    },
    "runs": {"type": "array", "items": _ref("run"), "description": "a list of runs"},
    "time_to_target": {
        "description": "{target_val_accuracy, per_seed} or null",
        "type": ["object", "null"], "required": ["target_val_accuracy", "per_seed"],
        "properties": {
            "target_val_accuracy": _FRACTION, "seeds_reached": _SIZE,
            "per_seed": {"type": "array", "description": "a list with one entry per seed",
                         "items": {"type": ["object", "null"], "required": ["epoch", "time_s", "updates"],
                                   "description": "{epoch, time_s, updates} or null",
                                   "properties": {"epoch": _COUNT, "time_s": _TIME, "updates": _COUNT}}},
        },
    },
    "floor": {
        # Absent, or a null median_ratio with `unavailable` saying why, where the floor cannot be timed.
        "description": "the matmul floor {median_ratio, ...} or null",
        "type": ["object", "null"],
        "properties": {"median_ratio": _nullable({**_NUMBER, "exclusiveMinimum": 0}, "a number > 0"),
                       "median_floor_time_s": _nullable(_TIME), "matmul_flops_per_epoch": _nullable(_NUMBER),
                       "unavailable": _STRING,
                       "epochs_timed": {"type": "array", "items": _COUNT, "description": "a list of epochs"}},
    },
    "scaling_point": {
        "description": "a data-parallel scaling point {variant, devices, batch_stats, epoch_s, examples_per_s, ...}",
        "type": "object", "required": ["variant", "devices", "batch_stats", "epoch_s", "update_s", "examples_per_s"],
        "properties": {"variant": _STRING, "devices": _COUNT, "batch_stats": {"enum": ["sync", "local"],
                                                                              "description": "sync or local"},
                       "norm": _nullable(_STRING), "batch_size": _COUNT, "epoch_s": _ref("spread"), "update_s": _TIME,
                       "examples_per_s": {**_NUMBER, "exclusiveMinimum": 0, "description": "a number > 0"}},
    },
    "seed_scaling": {
        "description": "seed scaling {seeds, ratio, ...}",
        "type": "object", "required": ["seeds", "ratio"],
        "properties": {"seeds": _COUNT, "seed_devices": _COUNT, "one_seed_epoch_s": _ref("spread"),
                       "seeds_epoch_s": _ref("spread"), "ratio": {**_NUMBER, "exclusiveMinimum": 0,
                                                                  "description": "a number > 0"},
                       "ratios": {"type": "array", "items": _NUMBER, "description": "a list of numbers"}},
    },
    "variant_summary": {
        "description": "a variant's summary {seeds, train_accuracy, val_accuracy, test_accuracy, epoch_time_s, "
                       "updates_per_epoch, ...}",
        "type": "object",
        "required": ["seeds", "train_accuracy", "val_accuracy", "test_accuracy", "epoch_time_s",
                     "updates_per_epoch"],
        "properties": {
            "seeds": _COUNT, "seed_devices": _COUNT, "data_devices": _COUNT, "description": _STRING,
            "model": {"type": "object", "required": ["family"],
                      "properties": {"family": _STRING, "norm": _nullable(_STRING, "a normalization's name")},
                      "description": "the model {family, ...its fields}"},
            # null where every seed diverged
            **{key: {"anyOf": [_ref("accuracy"), {"type": "null"}],
                     "description": "an accuracy over seeds {mean, std, ci95, n} or null"}
               for key in ("train_accuracy", "val_accuracy", "test_accuracy")},
            "diverged_seeds": _SIZE, "variant": _STRING, "config": _ref("config"),
            **{key: {"anyOf": [_ref("loss"), {"type": "null"}],
                     "description": "a loss over seeds {mean, std, ci95, n} or null"}
               for key in ("train_loss", "val_loss", "test_loss")},
            "epoch_time_s": _ref("spread"), "median_epoch_time_s": _TIME, "median_update_time_s": _TIME,
            "updates_per_epoch": _COUNT, "compile_time_s": {**_NUMBER, "minimum": 0, "description": "a number >= 0"},
            "time_to_target": _ref("time_to_target"), "floor": _ref("floor"),
            # From the harness: a lone compiled update's time, its figures, and seed scaling (opt-in).
            "step_time_s": _ref("spread"), "step": {"type": "object", "description": "an object"},
            "seed_scaling": _ref("seed_scaling"),
        },
    },
    "run_id": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "a run id (32 hex digits)"},
}

RUN_SCHEMA = {
    "$schema": DRAFT,
    "title": f"bnbench report, kind {REPORT_KIND}",
    "description": "bnbench's report, from `bnbench run` and `pytest benchmarks/`",
    "type": "object",
    "required": ["schema_version", "kind", "environment", "protocol", "runs", "summary"],
    "properties": {
        "schema_version": {"type": "integer", "minimum": 1, "maximum": SCHEMA_VERSION,
                           "description": f"a schema version from 1 to {SCHEMA_VERSION}"},
        "kind": {"const": REPORT_KIND, "description": REPORT_KIND},
        "run_id": _ref("run_id"),
        "created": _nullable(_STRING), "command": _nullable(_STRING),
        "environment": _ref("environment"), "protocol": _ref("protocol"), "runs": _ref("runs"),
        "summary": {"type": "object", "minProperties": 1, "additionalProperties": _ref("variant_summary"),
                    "description": "an object of variant summaries, one or more"},
        "data_parallel_scaling": {"type": "array", "items": _ref("scaling_point"),
                                  "description": "a list of data-parallel scaling points"},
    },
    "$defs": DEFS,
}


# A sweep: runs of several configurations. Its protocol holds what they share; each run's `config`
# and each summary entry's (one per variant and configuration) hold the rest; `sweep` the grid.
SWEEP_SCHEMA = {
    **RUN_SCHEMA,
    "title": f"bnbench report, kind {SWEEP_KIND}",
    "description": "bnbench's sweep report, from `bnbench sweep`",
    "required": [*RUN_SCHEMA["required"], "sweep"],
    "properties": {
        **RUN_SCHEMA["properties"],
        "kind": {"const": SWEEP_KIND, "description": SWEEP_KIND},
        "protocol": {**DEFS["protocol"], "required": [k for k in DEFS["protocol"]["required"]
                                                      if k not in ("batch_size", "learning_rate", "epochs",
                                                                   "updates_per_epoch")]},
        "runs": {"type": "array", "description": "a list of runs, each with its config",
                 "items": {"allOf": [_ref("run"), {"required": ["config"]}]}},
        "summary": {"type": "object", "minProperties": 1, "description": "an object of summaries, one per variant "
                    "and configuration, each with its variant and config",
                    "additionalProperties": {"allOf": [_ref("variant_summary"), {"required": ["variant", "config"]}]}},
        "sweep": {"type": "object", "description": "the sweep's grid {variants, learning_rate, ...}",
                  "required": ["variants", "learning_rate", "batch_size", "bn_momentum", "epochs", "seeds", "budget",
                               "lr_scaling", "reference_batch_size"],
                  "properties": {
                      "variants": {"type": "array", "items": _STRING, "minItems": 1, "description": "a list of names"},
                      "learning_rate": {"type": "array", "minItems": 1, "description": "a list of numbers > 0",
                                        "items": {**_NUMBER, "exclusiveMinimum": 0, "description": "a number > 0"}},
                      "batch_size": {"type": "array", "items": _COUNT, "minItems": 1,
                                     "description": "a list of whole numbers >= 1"},
                      "bn_momentum": {"type": "array", "description": "a list of momenta from 0 to below 1",
                                      "items": {**_NUMBER, "minimum": 0, "exclusiveMaximum": 1,
                                                "description": "a number from 0 to below 1"}},
                      "epochs": _COUNT, "reference_batch_size": _COUNT, "eval_every": _nullable(_COUNT),
                      "seeds": {"type": "array", "items": {"type": "integer", "description": "a whole number"},
                                "minItems": 1, "description": "a list of seeds"},
                      "budget": {"enum": ["epochs", "updates"], "description": "epochs or updates"},
                      "lr_scaling": {"enum": ["none", "linear"], "description": "none or linear"},
                      "target": _nullable(_FRACTION)}},
    },
}


def _tagged(tag: str, extra_info: dict, stats: dict | None = None) -> dict:
    """What a benchmark tagged ``extra_info.bnbench == tag`` must hold: its extra_info, naming the
    variant it measured, and pytest-benchmark's stats where bnbench reads them."""
    condition = {"required": ["extra_info"],
                 "properties": {"extra_info": {"type": "object", "required": ["bnbench"],
                                               "properties": {"bnbench": {"const": tag}}}}}
    extra_info = {**extra_info, "required": ["variant", *extra_info.get("required", [])],
                  "properties": {"variant": _STRING, **extra_info.get("properties", {})}}
    then = {"properties": {"extra_info": extra_info}}
    if stats is not None:
        then.update(required=["stats"], properties={**then["properties"], "stats": stats})
    return {"if": condition, "then": then}


_STEP_STATS = {
    "description": "pytest-benchmark's stats {median, iqr, min, max, rounds}",
    "required": ["median", "iqr", "min", "max", "rounds"],
    "properties": {"median": _TIME, "iqr": DEFS["spread"]["properties"]["iqr"], "min": _NUMBER, "max": _NUMBER,
                   "rounds": _COUNT},
}
PYTEST_BENCHMARK_SCHEMA = {
    "$schema": DRAFT,
    "title": "pytest-benchmark JSON of a bnbench harness session (the parts bnbench reads)",
    "type": "object",
    "required": ["machine_info", "benchmarks"],
    "properties": {
        "machine_info": {"type": "object", "required": ["bnbench"], "description": "an object",
                         "properties": {"bnbench": _ref("environment"), "bnbench_run_id": _ref("run_id")}},
        "benchmarks": {"type": "array", "description": "a list of benchmarks", "items": {
            "type": "object", "description": "a benchmark",
            "properties": {"extra_info": {"type": "object", "description": "an object",
                                          "properties": {"bnbench": _STRING}},
                           "stats": {"type": "object", "description": "an object"}},
            "allOf": [
                _tagged("step", {"properties": {"batch_size": _COUNT}}, stats=_STEP_STATS),
                _tagged("accuracy", {"required": ["summary", "runs", "protocol"],
                                     "properties": {"summary": _ref("variant_summary"), "runs": _ref("runs"),
                                                    "protocol": _ref("protocol")}}),
                _tagged("seed_scaling", {"allOf": [_ref("seed_scaling")]}),
                _tagged("data_parallel_scaling", {"allOf": [_ref("scaling_point")]}),
                _tagged("sweep_cost", {"required": ["ratio", "runs"],
                                       "properties": {"ratio": {**_NUMBER, "exclusiveMinimum": 0,
                                                                "description": "a number > 0"},
                                                      "runs": _COUNT}}),
            ],
        }},
    },
    "$defs": DEFS,
}

# The kinds of bnbench's own reports, by their `kind` field; a future bnbench.sweep slots in here.
KINDS = {REPORT_KIND: RUN_SCHEMA, SWEEP_KIND: SWEEP_SCHEMA}
SCHEMAS = {**KINDS, PYTEST_BENCHMARK: PYTEST_BENCHMARK_SCHEMA}


@functools.cache
def _validator(kind: str):
    # jsonschema is imported only to read reports: writing one (the harness, even on a GPU image
    # that lacks it) needs only the constants above.
    from jsonschema import Draft202012Validator

    return Draft202012Validator(SCHEMAS[kind])


class Invalid(Exception):
    """What is wrong with a report, in one line (without the file's name)."""


def validate(raw) -> str:
    """Checks a parsed report once; returns its kind (a key of SCHEMAS) or raises Invalid."""
    problem = strict_json_problem(raw)
    if problem:
        raise Invalid(problem)
    kind = kind_of(raw)
    if kind in KINDS:
        _check_version(raw.get("schema_version"))
    from jsonschema.exceptions import best_match

    error = best_match(_validator(kind).iter_errors(raw))
    if error is not None:
        raise Invalid(describe(error, SCHEMAS[kind]))
    _check_epochs(raw, kind)
    return kind


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
    # Before the schema, so that a newer report says "upgrade" rather than naming a field.
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise Invalid(f"written with schema_version {version}, newer than this bnbench reads ({SCHEMA_VERSION}): "
                      "upgrade bnbench")


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


def _check_epochs(raw: dict, kind: str) -> None:
    """Every run holds one record per epoch of its protocol (or its config), with its accuracies up
    to where it diverged, if it did, and its test accuracy if it did not (a schema cannot relate
    two fields)."""
    if kind in KINDS:
        groups = [(("runs",), raw["runs"], raw["protocol"])]
    else:
        groups = [(("benchmarks", i, "extra_info", "runs"), b["extra_info"]["runs"], b["extra_info"]["protocol"])
                  for i, b in enumerate(raw["benchmarks"]) if b.get("extra_info", {}).get("bnbench") == "accuracy"]
    for path, runs, protocol in groups:
        for i, run in enumerate(runs):
            where, expected = (*path, i), run.get("config", protocol)["epochs"]
            source = "config.epochs" if "config" in run else "protocol.epochs"
            if len(run["epochs"]) != expected:
                raise Invalid(f"{json_path((*where, 'epochs'))}: expected {expected} epoch records "
                              f"({source}), got {len(run['epochs'])}")
            diverged = run.get("diverged", {}).get("epoch", expected + 1)
            for j, record in enumerate(run["epochs"][:diverged - 1]):
                for key in ("train_accuracy", "val_accuracy"):
                    if key not in record:
                        raise Invalid(f"{json_path((*where, 'epochs', j, key))}: missing; expected an accuracy "
                                      "between 0 and 1 (absent only from the epoch the run diverged in on)")
            if "diverged" in run and "test_accuracy" in run:
                raise Invalid(f"{json_path((*where, 'test_accuracy'))}: a diverged run has no test accuracy "
                              "(remove it, or the run's `diverged`)")
            if "diverged" not in run and "test_accuracy" not in run:
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


def _resolve(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref", "")
    return root["$defs"][ref.rsplit("/", 1)[-1]] if ref.startswith("#/$defs/") else schema


def _expected(schema: dict, root: dict) -> str:
    schema = _resolve(schema, root)
    if "description" in schema:
        return schema["description"]
    if "const" in schema:
        return json.dumps(schema["const"])
    return f"a value of type {schema.get('type', 'any')}"


def _short(value) -> str:
    """A value as it would read in the file, cut short; always one line."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(error, root: dict) -> str:
    """One line: the JSON path of the field, what was expected there, and what the file holds."""
    path = tuple(error.absolute_path)
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        wanted = _expected(error.schema.get("properties", {}).get(missing, {}), root)
        return f"{json_path((*path, missing))}: missing; expected {wanted}"
    where = json_path(path)
    got = _short(error.instance)
    if error.validator in ("minItems", "maxItems", "minProperties"):
        size = len(error.instance)
        return f"{where}: expected {_expected(error.schema, root)}, got {size} item{'s' * (size != 1)}"
    if error.validator == "uniqueItems":
        return f"{where}: expected no repeated items, got {got}"
    return f"{where}: expected {_expected(error.schema, root)}, got {got}"


def main(argv: list[str]) -> int:
    """``python -m bnbench.record.schema [KIND]``: the JSON Schema of a report kind, for other tools."""
    kind = argv[0] if argv else REPORT_KIND
    if kind not in SCHEMAS or len(argv) > 1:
        print(f"bnbench: error: no report kind {' '.join(argv)!r}: choose one of {', '.join(SCHEMAS)}",
              file=sys.stderr)
        return 2
    print(json.dumps(SCHEMAS[kind], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
