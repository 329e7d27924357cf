"""Where a training epoch's time goes: XLA's own trace of a compiled epoch (``jax.profiler``), each
kernel attributed to the model operation it computes.

The epoch is the engine's (``train.train_epoch``: the shuffled batches under one ``lax.scan``) over
the first ``steps`` x batch examples of the training split, so its kernels are those of a real
epoch. XLA fuses neighbouring operations into one kernel; a kernel is attributed to the operation
that produces its output (its root's ``op_name`` in the compiled HLO, which carries JAX's name
stack: ``jvp(ConvNet)/BatchNorm_0/reduce_sum``); a kernel whose output is an operation of no
named part (the ``select`` of a ReLU's backward, fused with the pooling's) counts under "update and
other". The products are what the matmul floor rebuilds (``measure.floor``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import jax

from bnbench.engine import train
from bnbench.models.variants import Variant

# (category, what its kernels' op_name contains): the first that matches names a kernel's category.
CATEGORIES = (
    ("pooling", ("max_pool",)),
    ("normalization", ("BatchNorm", "BatchRenorm", "GroupNorm", "LayerNorm", "RMSNorm")),
    ("patches (im2col)", ("/Conv_",)),
    ("activation", ("relu", "leaky_relu")),
    ("batch gather", ("gather",)),
    ("loss", ("softmax", "log_softmax", "one_hot", "argmax", "logsumexp")),
)
PRODUCTS = "products"
OTHER = "update and other"
_NOT_KERNELS = ("while", "conditional", "call", "parameter", "tuple", "get-tuple-element", "constant", "bitcast")


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str  # the HLO instruction's, as in the trace
    op_name: str
    category: str
    us_per_step: float
    calls_per_step: float


@dataclasses.dataclass(frozen=True)
class Profile:
    variant: str
    steps: int
    batch_size: int
    step_us: float  # an untraced epoch's wall time per step, median of ``repeats``
    kernels: list[Kernel]

    def by_category(self) -> list[tuple[str, float, int]]:
        """(category, microseconds per step, kernels), largest first."""
        totals, counts = collections.Counter(), collections.Counter()
        for k in self.kernels:
            totals[k.category] += k.us_per_step
            counts[k.category] += 1
        return [(c, t, counts[c]) for c, t in totals.most_common()]


def _instructions(hlo: str) -> dict[str, tuple[str, str, bool]]:
    """Each instruction's (opcode, op_name, whether it is or calls a product) in compiled HLO text."""
    computations, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
        elif current is not None and " = " in line:
            current.append(line)
    out = {}
    for lines in computations.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(", line)
            if not m or m.group(1) in out:
                continue
            opcode = m.group(2)
            op_name = re.search(r'op_name="([^"]*)"', line)
            called = re.search(r"calls=%?([\w.\-]+)", line)
            inner = computations.get(called.group(1), []) if called else []
            product = opcode in ("dot", "convolution") or any(re.search(r" (dot|convolution)\(", s) for s in inner)
            out[m.group(1)] = (opcode, op_name.group(1) if op_name else "", product)
    return out


def category(op_name: str, product: bool) -> str:
    if product:
        return PRODUCTS
    return next((c for c, marks in CATEGORIES if any(m in op_name for m in marks)), OTHER)


def _trace_events(folder: Path) -> list[dict]:
    paths = sorted(folder.glob("**/*.trace.json.gz"))
    if not paths:
        raise RuntimeError(f"jax.profiler wrote no trace under {folder}")
    with gzip.open(paths[-1]) as f:
        return json.load(f)["traceEvents"]


def profile_epoch(variant: Variant, data: train.DeviceData, protocol: train.Protocol | None = None,
                  steps: int = 300, repeats: int = 5, seed: int = 0) -> Profile:
    """Trace one compiled epoch of ``steps`` updates of ``variant`` and attribute its kernels."""
    protocol = protocol or train.Protocol()
    batch_size = protocol.batch_size
    n = steps * batch_size
    if data.train_labels.shape[0] < n:
        raise ValueError(f"{steps} steps of {batch_size} need {n} training examples; the data has "
                         f"{data.train_labels.shape[0]}")
    images, labels = data.train_images[:n], data.train_labels[:n]
    tx = protocol.transform()
    state = train.initializer(variant.model, tuple(images.shape[1:]), protocol.kind)(jax.random.PRNGKey(seed))
    epoch = jax.jit(functools.partial(train.train_epoch, variant.model, tx, batch_size))
    key = jax.random.PRNGKey(seed + 1)
    compiled = epoch.lower(state, key, images, labels).compile()
    jax.block_until_ready(compiled(state, key, images, labels))
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, key, images, labels))
        walls.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            jax.block_until_ready(compiled(state, key, images, labels))
        events = _trace_events(Path(folder))
    instructions = _instructions(compiled.as_text())
    times, calls = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name")
        if e.get("ph") == "X" and name in instructions and instructions[name][0] not in _NOT_KERNELS:
            times[name] += e["dur"]
            calls[name] += 1
    kernels = [Kernel(name, instructions[name][1], category(instructions[name][1], instructions[name][2]),
                      times[name] / steps, calls[name] / steps) for name, _ in times.most_common()]
    return Profile(variant.name, steps, batch_size, statistics.median(walls) / steps * 1e6, kernels)


def table(profile: Profile, top: int = 12) -> str:
    """The categories, then the ``top`` kernels, as Markdown."""
    kernel_total = sum(k.us_per_step for k in profile.kernels)
    lines = [f"{profile.variant}: {profile.step_us:.0f} us per step (wall, untraced; batch {profile.batch_size}, "
             f"{profile.steps} steps); kernels summed: {kernel_total:.0f} us", "",
             "| part of the step | us per step | share of kernel time | kernels |", "| --- | ---: | ---: | ---: |"]
    for name, us, count in profile.by_category():
        lines.append(f"| {name} | {us:.0f} | {us / kernel_total:.0%} | {count} |")
    lines += ["", "| kernel | part | us per step | operation (HLO op_name) |", "| --- | --- | ---: | --- |"]
    for k in profile.kernels[:top]:
        lines.append(f"| {k.name} | {k.category} | {k.us_per_step:.0f} | `{k.op_name.split('closed_call/')[-1]}` |")
    return "\n".join(lines)


def side_by_side(profiles: list[Profile]) -> str:
    """Each part's microseconds per step, one column per variant, as Markdown."""
    parts = list(dict.fromkeys(c for p in profiles for c, _, _ in p.by_category()))
    totals = [dict((c, us) for c, us, _ in p.by_category()) for p in profiles]
    lines = ["| us per step | " + " | ".join(p.variant for p in profiles) + " |",
             "| --- | " + " | ".join("---:" for _ in profiles) + " |"]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(f"{t.get(part, 0.0):.0f}" for t in totals) + " |")
    lines.append("| kernels summed | " + " | ".join(f"{sum(t.values()):.0f}" for t in totals) + " |")
    lines.append("| step (wall, untraced) | " + " | ".join(f"{p.step_us:.0f}" for p in profiles) + " |")
    return "\n".join(lines)
