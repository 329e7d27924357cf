"""Every option that `bnbench run`, `bnbench sweep` and `pytest benchmarks/` share, declared once.

An ``Option`` holds its flag, default, help and how its text becomes a value (checked, with a
message that says what was wrong). ``add_to_argparse`` adds options to a command of the CLI and
``add_to_pytest`` to the harness's option group, as pytest-benchmark declares its options once for
its plugin and its CLI; ``read_pytest`` checks the harness's values with the same parsers, so that
a bad value is one line in both front ends. Adding an option is one declaration here and its name
in the front ends' lists below.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from typing import Any, Callable, Sequence

from bnbench import config
from bnbench.errors import BnbenchError


class BadValue(argparse.ArgumentTypeError):
    """An option's text is not a value it takes; the message says why."""


def whole(least: int) -> Callable[[str], int]:
    """A parser of whole numbers of at least ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise BadValue(f"{text!r} is not a whole number") from None
        if value < least:
            raise BadValue(f"{text!r} must be at least {least}")
        return value
    return parse


positive_int = whole(1)


def number(text: str) -> float:
    """``text`` as a float; one line naming it otherwise (each parser below adds its range)."""
    try:
        return float(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise BadValue(f"{text!r} must be greater than 0")
    if not math.isfinite(value):
        raise BadValue(f"{text!r} must be a finite number")
    return value


def fraction(text: str) -> float:
    """An accuracy in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise BadValue(f"{text!r} must be an accuracy between 0 and 1")
    return value


# A momentum (SGD's, or Adam's b1) lies in [0, 1); a weight decay is finite, 0 or more. One rule
# and one wording for the parsers below, the protocol and the sweep's grid.
NOT_A_MOMENTUM = "is not a momentum: choose a value from 0 to below 1, as 0.9"
NOT_A_WEIGHT_DECAY = "is not a weight decay: choose a finite value of 0 or more, as 5e-4"


def is_momentum(value: float) -> bool:
    return 0 <= value < 1


def is_weight_decay(value: float) -> bool:
    return value >= 0 and math.isfinite(value)


def momentum(text: str) -> float:
    value = number(text)
    if not is_momentum(value):
        raise BadValue(f"{text!r} {NOT_A_MOMENTUM}")
    return value


def weight_decay(text: str) -> float:
    value = number(text)
    if not is_weight_decay(value):
        raise BadValue(f"{text!r} {NOT_A_WEIGHT_DECAY}")
    return value


def cpu_devices(text: str) -> int | None:
    """``auto`` (None: chosen from the runs and the cores) or a count."""
    if text == "auto":
        return None
    try:
        return positive_int(text)
    except BadValue as e:
        raise BadValue(f"{e}; or use 'auto'") from None


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise BadValue(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return parse


def text(value: str) -> str:
    return value


def number_list(text: str, option: str, kind: type = float) -> list:
    """A sweep's values: ``1e-3,1e-2,0.1`` as a list of numbers; one line naming the bad item otherwise."""
    items = text.split(",")
    values = []
    for item in items:
        item = item.strip()
        if not item:
            raise BnbenchError(f"{option} {text!r}: an empty item; give numbers separated by commas, as in "
                               f"{option} {'1e-3,1e-2,0.1' if kind is float else '16,32,64'}")
        try:
            value = kind(item)
        except ValueError:
            raise BnbenchError(f"{option} {text!r}: {item!r} is not a {'number' if kind is float else 'whole number'}"
                               ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise BnbenchError(f"{option} {text!r}: {item!r} is not a finite number")
        values.append(value)
    if len(set(values)) != len(values):
        raise BnbenchError(f"{option} {text!r}: a value is repeated; give each once")
    return values


def classes_per_batch(batch_order: str) -> int | None:
    """K of ``classes:K``; None for ``iid``."""
    return None if batch_order == "iid" else int(batch_order.partition(":")[2])


def batch_orders(text: str) -> tuple[str, ...]:
    """``--batch-order iid,classes:2``: each order ``iid`` or ``classes:K`` with K of 1 or more."""
    items = [item.strip() for item in text.split(",")]
    for item in items:
        kind, colon, k = item.partition(":")
        if item != "iid" and not (kind == "classes" and colon and k.isdigit()):
            raise BadValue(f"{item!r} is not a batch order: choose iid or classes:K (K classes in each batch, as "
                           "classes:2), or several separated by commas in a sweep")
        if item != "iid" and int(k) < 1:
            raise BadValue(f"{item!r}: a batch holds at least one class; choose classes:1 or more")
    if len(set(items)) != len(items):
        raise BadValue(f"{text!r}: an order is repeated; give each once")
    return tuple(items)


def check_batch_order(batch_order: str, batch_size: int | None = None, num_classes: int | None = None) -> None:
    """One line for a batch order that is not one, or cannot form batches of ``batch_size`` from
    ``num_classes`` classes."""
    try:
        batch_orders(batch_order)
    except BadValue as e:
        raise BnbenchError(f"--batch-order {e}") from None
    k = classes_per_batch(batch_order)
    if k is None or batch_size is None:
        return
    if num_classes is not None and k > num_classes:
        raise BnbenchError(f"--batch-order {batch_order}: the data has {num_classes} classes; choose classes:K "
                           f"with K from 1 to {num_classes}")
    if batch_size % k:
        fits = [d for d in range(1, min(batch_size, num_classes or batch_size) + 1) if batch_size % d == 0]
        raise BnbenchError(f"--batch-order {batch_order}: {k} classes do not share a batch of {batch_size} evenly "
                           f"(B/K examples each); choose K that divides the batch size ({', '.join(map(str, fits))})")


def values(option: "Option", text: str) -> list:
    """A sweep's list of ``option``'s values (``0,5e-4``), each checked by the option's own parser;
    one line naming the bad item otherwise."""
    found = number_list(text, option.flag)
    for item in text.split(","):
        try:
            option.parse(item.strip())
        except BadValue as e:
            raise BnbenchError(f"{option.flag} {text!r}: {e}") from None
    return found


def resolve_momentum(optimizer: str, given: float | None) -> float:
    """The momentum an optimizer trains with: ``given``, or DEFAULT_MOMENTUM where one applies.
    Plain SGD has none: a momentum above 0 with it is one line pointing to ``--optimizer momentum``."""
    if optimizer == "sgd":
        if given:
            raise BnbenchError(f"--momentum {given:g} with --optimizer sgd: plain SGD (the notebook's) has no "
                               "momentum; use --optimizer momentum or nesterov for SGD with momentum")
        return 0.0
    return config.DEFAULT_MOMENTUM if given is None else given


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of the front ends: ``parse`` turns its text into its value or raises BadValue."""

    flag: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = text
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    switch: bool = False  # a flag without a value (store_true)
    # May differ between the processes of one job without changing what they train together.
    per_process: bool = False

    def listed(self, example: str) -> "Option":
        """This option as a sweep takes it: comma-separated values trained together in one program,
        parsed by ``values`` (with this option's parser) once the command starts."""
        return dataclasses.replace(self, parse=text, default=None, metavar=f"{example},...",
                                   help=f"{self.help}; comma-separated values, trained together in one program")

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def help_text(self) -> str:
        if self.switch or self.default is None or "(default" in self.help:
            return self.help
        default = ",".join(self.default) if isinstance(self.default, tuple) else self.default
        return f"{self.help} (default {default})"


def single(option: Option, values: tuple, where: str) -> str:
    """The one value of a list option where a front end takes one (``run``, the harness)."""
    if len(values) != 1:
        raise BnbenchError(f"{option.flag} {','.join(values)}: {where} trains one; sweep several with bnbench sweep")
    return values[0]


EPOCHS = Option("--epochs", "training epochs", 10, positive_int)
SEEDS = Option("--seeds", "seeds trained together", 1, positive_int)
CPU_DEVICES = Option(
    "--cpu-devices", "on a CPU, split it into N JAX devices and spread the runs over them, so that they train on "
    "all cores at once (default auto: at least one per core, as many as split the runs evenly); more devices "
    "than cores slow each one's work", None, cpu_devices, metavar="N", per_process=True)
DATASET = Option("--dataset", "fashion_mnist (default), mnist, kmnist or cifar10 (the last two from a prepared "
                 "tfds data dir)", "fashion_mnist")
DATA_DIR = Option("--data-dir", "a folder with the four IDX files, or a tfds data dir (default: tfds' prepared "
                  "copy if any, else the release files, downloaded once into the cache)", metavar="DIR",
                  per_process=True)
DOWNLOAD_URL = Option("--download-url", "without --data-dir, download the four release IDX files from this mirror "
                      "(a base URL) instead of the official locations (default: $BNBENCH_DOWNLOAD_URL)",
                      metavar="URL", per_process=True)
TARGET = Option("--target", "validation accuracy whose time and updates to reach are reported", 0.84, fraction)
DATA_PARALLEL = Option(
    "--data-parallel", "split each batch over N devices, parameters replicated; on a CPU, --cpu-devices "
    "defaults to N (per process: N over --num-processes)", 1, positive_int, metavar="N")
BATCH_STATS = Option(
    "--batch-stats", "with --data-parallel: BatchNorm's statistics over the whole batch (sync: what one "
    "device computes) or over each device's shard (local, 'ghost' BatchNorm; moving statistics averaged over "
    "the devices)", config.BATCH_STATS[0], one_of(config.BATCH_STATS), choices=config.BATCH_STATS)
COORDINATOR = Option("--coordinator", "one process of several: process 0's address, the same for every process "
                     "(with --num-processes and --process-id; under SLURM, found from the job)", metavar="HOST:PORT")
NUM_PROCESSES = Option("--num-processes", "processes in the job", None, positive_int, metavar="P")
PROCESS_ID = Option("--process-id", "this process's number, 0 to P-1", None, whole(0), metavar="I",
                    per_process=True)
PEER_TIMEOUT = Option("--peer-timeout", "seconds to wait for every process to join, and for a silent one before "
                      "the job stops", 60, positive_int, metavar="S")
def grid_slice(text: str) -> tuple[int, int]:
    """``I/N``: the I-th of N slices, 1 <= I <= N."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit() or not 1 <= int(index) <= int(count):
        raise BadValue(f"{text!r} is not a slice: give I/N with 1 <= I <= N, as in 1/4 (the first of four)")
    return int(index), int(count)


SLICE = Option("--slice", "train only the I-th of N disjoint slices of the grid's configurations (each with "
               "every seed), for a job array; join the slices' reports with bnbench merge", None, grid_slice,
               metavar="I/N")
OPTIMIZER = Option(
    "--optimizer", "optax's: sgd (plain SGD, the notebook's), momentum (SGD with heavy-ball momentum), nesterov, "
    "adam or adamw", "sgd", one_of(config.OPTIMIZERS), choices=config.OPTIMIZERS)
MOMENTUM = Option(
    "--momentum", "SGD's momentum with --optimizer momentum or nesterov, Adam's and AdamW's b1 (default "
    f"{config.DEFAULT_MOMENTUM} where it applies; plain sgd has none)", None, momentum, metavar="M")
WEIGHT_DECAY = Option(
    "--weight-decay", "on every parameter: an L2 term added to the gradient (coupled) for sgd, momentum, nesterov "
    "and adam; decoupled for adamw (the weights shrink by learning rate x decay each update, as optax and "
    "PyTorch)", 0.0, weight_decay, metavar="WD")
PRECISION = Option(
    "--precision", "float32 (the notebook's); bfloat16: products and activations in bfloat16, parameters, "
    "optimizer state and normalization statistics in float32; bfloat16-statistics: the statistics in bfloat16 "
    "too. Sets every variant's precision field unless its name sets it", config.PRECISIONS[0],
    one_of(config.PRECISIONS), choices=config.PRECISIONS)
QUIET = Option("--quiet", "no progress output", False, switch=True, per_process=True)
BATCH_ORDER = Option(
    "--batch-order", "how training batches are formed: iid (a random permutation) or classes:K (each batch K "
    "classes, B/K examples each; every example still once an epoch; docs/statistics.md); a sweep takes several, "
    "comma-separated, one program each", ("iid",), batch_orders, metavar="ORDER")

DATA = (DATASET, DATA_DIR, DOWNLOAD_URL)
SCALE_OUT = (DATA_PARALLEL, BATCH_STATS, COORDINATOR, NUM_PROCESSES, PROCESS_ID, PEER_TIMEOUT)
# What each front end takes from here (each adds its own options beside them).
TRAINING = (OPTIMIZER, MOMENTUM, WEIGHT_DECAY, PRECISION)
RUN = (EPOCHS, SEEDS, CPU_DEVICES, *DATA, TARGET, *TRAINING, BATCH_ORDER, QUIET)
# A sweep trains several momenta and weight decays together, as it does learning rates.
SWEEP = (EPOCHS, SEEDS, CPU_DEVICES, *DATA, TARGET, OPTIMIZER, MOMENTUM.listed("0.9,0.99"),
         WEIGHT_DECAY.listed("0,5e-4"), PRECISION, BATCH_ORDER, SLICE, QUIET)
HARNESS = (EPOCHS, SEEDS, CPU_DEVICES, *DATA, TARGET, *TRAINING, BATCH_ORDER, *SCALE_OUT)

# Options of the front ends' own that may differ between processes too (the files each writes).
PER_PROCESS_OPTIONS = ("--out", "--bnbench-report", "--benchmark-json", "--benchmark-save", "--benchmark-storage")
PER_PROCESS_FLAGS = ("--benchmark-autosave",)


def recorded_command(program: str, argv: Sequence[str]) -> str:
    """The command line a report records: as typed, but a mirror URL's query (a signed URL's token)
    replaced by ``?...``, so that a report can be shared without its credentials."""
    words, hide_next = [], False
    for word in argv:
        flag, eq, value = word.partition("=")
        if hide_next or (flag == DOWNLOAD_URL.flag and eq):
            target = word if hide_next else value
            target = target.split("?", 1)[0] + ("?..." if "?" in target else "")
            word = target if hide_next else f"{flag}={target}"
        hide_next = word == DOWNLOAD_URL.flag
        words.append(word)
    return shlex.join([*program.split(), *words])


def per_process() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(options with a value, flags) whose values may differ between the processes of one job."""
    declared = [o for o in (*RUN, *SCALE_OUT) if o.per_process]
    return (tuple(sorted({o.flag for o in declared if not o.switch} | set(PER_PROCESS_OPTIONS))),
            tuple(sorted({o.flag for o in declared if o.switch} | set(PER_PROCESS_FLAGS))))


def add_to_argparse(group, options: Sequence[Option]) -> None:
    for o in options:
        if o.switch:
            group.add_argument(o.flag, action="store_true", help=o.help_text())
        else:
            group.add_argument(o.flag, type=o.parse, default=o.default, metavar=o.metavar, choices=o.choices,
                               help=o.help_text().replace("%", "%%"))


def add_to_pytest(group, options: Sequence[Option]) -> None:
    """As text: pytest would answer a bad typed value with its usage block; ``read_pytest`` checks them."""
    for o in options:
        if o.switch:
            group.addoption(o.flag, action="store_true", help=o.help_text())
        else:
            group.addoption(o.flag, default=None, metavar=o.metavar, help=o.help_text())


def read_pytest(option_values, options: Sequence[Option]) -> None:
    """Parses the harness's values in place (``config.option``); raises BadValue naming the option."""
    for o in options:
        if o.switch:
            continue
        value = getattr(option_values, o.dest, None)
        if value is None:
            setattr(option_values, o.dest, o.default)
        elif isinstance(value, str):
            try:
                setattr(option_values, o.dest, o.parse(value))
            except BadValue as e:
                raise BadValue(f"{o.flag}: {e}") from None
