"""Sweeps: variants trained over a grid of learning rates, batch sizes and BN momenta, for each seed.

Configurations that differ only in numbers (learning rate, momentum) train together with the seeds
in one compiled program (``experiment.run_variant(configs=...)``); each batch size is a program of its
own. The report is written again, atomically, after each program finishes, so that an interrupted
sweep keeps every finished program, and ``--resume`` runs only what the report lacks.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
from typing import Callable, Sequence

import numpy as np

from bnbench import options
from bnbench.config import MOVING_STATISTICS, OPTIMIZERS, PRECISIONS
from bnbench.data.sources import Dataset
from bnbench.engine import train
from bnbench.errors import BnbenchError
from bnbench.measure import experiment
from bnbench.models.norms import KERAS_BN_MOMENTUM
from bnbench.models.variants import Variant
from bnbench.parallel.devices import SINGLE_DEVICE, DataParallel
from bnbench.record import model
from bnbench.record.model import SWEEP_KIND

BUDGETS = ("epochs", "updates")
LR_SCALINGS = ("none", "linear")


@dataclasses.dataclass(frozen=True)
class Grid:
    """What a sweep trains: every variant at every combination of the grid's values, for each seed."""

    variants: tuple[str, ...]
    learning_rates: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    bn_momenta: tuple[float, ...]
    epochs: int
    seeds: tuple[int, ...]
    budget: str = "epochs"  # hold epochs fixed, or the number of updates (to the nearest whole epoch)
    lr_scaling: str = "none"  # or "linear": the learning rate times batch_size / reference_batch_size
    reference_batch_size: int = 32
    eval_every: int | None = None
    target: float | None = None  # the validation accuracy whose time and updates to reach are reported
    slice: tuple[int, int] | None = None  # (I, N): only the I-th of N slices of the configurations (job arrays)
    # Ghost batch sizes (the variants' ghost_batch field; empty: each variant's own) and batch
    # orders: shapes or the sampler differ, so one program each, as batch sizes.
    ghost_batches: tuple[int, ...] = ()
    batch_orders: tuple[str, ...] = ("iid",)
    optimizer: str = "sgd"
    momenta: tuple[float, ...] = ()  # the optimizer's; empty: its default (config.DEFAULT_MOMENTUM, or none)
    weight_decays: tuple[float, ...] = ()  # empty: none
    precision: str = "float32"  # every variant's, unless its name sets it

    def check(self, train_examples: int | None = None) -> None:
        """One line for the first value out of its range; batch sizes against the training set
        once it is known."""
        repeated = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if repeated:
            raise BnbenchError(f"--variant {repeated[0]} is given twice: name each variant once")
        for lr in self.learning_rates:
            if not lr > 0:
                raise BnbenchError(f"--learning-rate: {lr:g} is not a learning rate; every rate must be above 0")
            if not np.float32(lr) > 0 or not np.isfinite(np.float32(lr)):
                raise BnbenchError(f"--learning-rate: {lr:g} is not a float32 number (training computes in float32); "
                                   "choose rates from 1e-30 to 1e30")
        for b in self.batch_sizes:
            if b < 1:
                raise BnbenchError(f"--batch-size: {b} is not a batch size; choose sizes of 1 or more")
            if train_examples is not None and b > train_examples:
                raise BnbenchError(f"--batch-size: {b} is not a batch size for {train_examples} training examples; "
                                   f"choose sizes from 1 to {train_examples}")
        for m in self.bn_momenta:
            if not 0 <= m < 1:
                raise BnbenchError(f"--bn-momentum: {m:g} is not a momentum; choose values from 0 to below 1")
        if self.budget not in BUDGETS:
            raise BnbenchError(f"--budget {self.budget!r}: choose one of {', '.join(BUDGETS)}")
        if self.eval_every is not None and train_examples is not None:
            fewest = min(-(-train_examples // b) for b in self.batch_sizes)
            if self.eval_every >= fewest:
                raise BnbenchError(f"--eval-every {self.eval_every}: an epoch has only {fewest} updates at batch "
                                   f"{max(self.batch_sizes)}, and evaluations are every N updates of each epoch; "
                                   f"choose N below {fewest}")
        for g in self.ghost_batches:
            if g < 1:
                raise BnbenchError(f"--ghost-batch: {g} is not a group size; choose sizes of 1 or more examples")
            for b in self.batch_sizes:
                if b % g:
                    fits = ", ".join(str(d) for d in range(1, b + 1) if b % d == 0)
                    raise BnbenchError(f"--ghost-batch: {g} does not divide the batch size {b}; choose group sizes "
                                       f"that divide every batch size ({fits})")
        if self.lr_scaling not in LR_SCALINGS:
            raise BnbenchError(f"--lr-scaling {self.lr_scaling!r}: choose one of {', '.join(LR_SCALINGS)}")
        if self.optimizer not in OPTIMIZERS:
            raise BnbenchError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise BnbenchError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        for m in self.momenta:
            if not options.is_momentum(m):
                raise BnbenchError(f"--momentum: {m:g} {options.NOT_A_MOMENTUM}")
            options.resolve_momentum(self.optimizer, m)
        for wd in self.weight_decays:
            if not options.is_weight_decay(wd):
                raise BnbenchError(f"--weight-decay: {wd:g} {options.NOT_A_WEIGHT_DECAY}")

    def optimizer_momenta(self) -> tuple[float, ...]:
        """The optimizer's momenta the grid trains: those given, or the optimizer's one."""
        return self.momenta or (options.resolve_momentum(self.optimizer, None),)

    def optimizer_weight_decays(self) -> tuple[float, ...]:
        return self.weight_decays or (0.0,)

    def training(self) -> dict:
        """The optimizer as the protocol records it: its kind, and its momentum and weight decay
        where every configuration shares one (else each configuration's ``config`` holds them)."""
        fields = {"optimizer": self.optimizer}
        if len(self.optimizer_momenta()) == 1:
            fields["momentum"] = self.optimizer_momenta()[0]
        if len(self.optimizer_weight_decays()) == 1:
            fields["weight_decay"] = self.optimizer_weight_decays()[0]
        return fields

    @classmethod
    def from_record(cls, record: dict, protocol: dict) -> "Grid":
        """The grid a sweep report records (its optimizer and precision in the protocol), every axis
        that names a summary entry included, so that entries named from it are the sweep's."""
        return cls(variants=tuple(record["variants"]), learning_rates=tuple(record["learning_rate"]),
                   batch_sizes=tuple(record["batch_size"]), bn_momenta=tuple(record["bn_momentum"]),
                   epochs=record["epochs"], seeds=tuple(record["seeds"]), budget=record["budget"],
                   lr_scaling=record["lr_scaling"], reference_batch_size=record["reference_batch_size"],
                   eval_every=record.get("eval_every"), target=record.get("target"),
                   ghost_batches=tuple(record.get("ghost_batch") or ()),
                   batch_orders=tuple(record.get("batch_order") or ("iid",)),
                   optimizer=protocol.get("optimizer", "sgd"), momenta=tuple(record.get("momentum") or ()),
                   weight_decays=tuple(record.get("weight_decay") or ()),
                   precision=protocol.get("precision", "float32"))

    def record(self) -> dict:
        """The grid as the report stores it; ``--resume`` refuses a report whose grid differs."""
        return {"variants": list(self.variants), "learning_rate": list(self.learning_rates),
                "batch_size": list(self.batch_sizes), "bn_momentum": list(self.bn_momenta), "epochs": self.epochs,
                "seeds": list(self.seeds), "budget": self.budget, "lr_scaling": self.lr_scaling,
                "reference_batch_size": self.reference_batch_size, "eval_every": self.eval_every,
                "target": self.target,
                # Only where swept, so that sweeps from before these axes keep comparing with new ones.
                **({"ghost_batch": list(self.ghost_batches)} if self.ghost_batches else {}),
                **({"batch_order": list(self.batch_orders)} if self.batch_orders != ("iid",) else {}),
                # Only in a slice's report: a whole grid's record stays what it was before slices.
                **({"slice": {"index": self.slice[0], "count": self.slice[1]}} if self.slice else {}),
                # Only where given: a sweep without them records (and compares) as sweeps did before them.
                **({"momentum": list(self.momenta)} if self.momenta else {}),
                **({"weight_decay": list(self.weight_decays)} if self.weight_decays else {})}

    def epochs_for(self, batch_size: int, train_examples: int) -> int:
        """Epochs at ``batch_size``: the grid's, or with an updates budget as many as give the updates
        of ``epochs`` at the reference batch size, to the nearest whole epoch (at least one)."""
        if self.budget == "epochs":
            return self.epochs
        updates = self.epochs * -(-train_examples // self.reference_batch_size)
        return max(1, math.floor(updates / -(-train_examples // batch_size) + 0.5))  # halves up, not to even

    def learning_rate_for(self, learning_rate: float, batch_size: int) -> float:
        if self.lr_scaling == "linear":
            return learning_rate * batch_size / self.reference_batch_size
        return learning_rate


def uses_momentum(variant: Variant) -> bool:
    return getattr(variant.model, "norm", None) in MOVING_STATISTICS


def with_ghost_batch(variant: Variant, ghost_batch: int | None) -> Variant:
    """``variant`` with its statistics over groups of ``ghost_batch`` (None: the variant as it is)."""
    if ghost_batch is None:
        return variant
    return Variant(variant.name, variant.description, variant.model.clone(ghost_batch=ghost_batch))


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program of a sweep: a variant at one batch size, with its configurations."""

    variant: Variant
    protocol: train.Protocol
    configs: tuple[dict, ...]

    def axes(self) -> str:
        """The program's ghost batch and batch order, where the sweep varies them, for its progress line."""
        config = self.configs[0]
        return "".join(f", {text}" for key, text in (("ghost_batch", f"ghost batch {config.get('ghost_batch')}"),
                                                      ("batch_order", f"{config.get('batch_order')} order"))
                       if key in config)


def programs(grid: Grid, chosen: Sequence[Variant], train_examples: int, data_devices: int = 1) -> list[Program]:
    """The sweep's programs in order: per variant, per batch order, per ghost batch, per batch size,
    every learning rate and momentum. A variant without batch statistics has no ghost batch: it is
    trained once, its configurations without ``ghost_batch`` (the sweep's control)."""
    out = []
    for variant in chosen:
        if len(grid.bn_momenta) > 1 and not uses_momentum(variant):
            raise BnbenchError(f"--bn-momentum: {variant.name} has no moving statistics to sweep the momentum of; "
                               "sweep it over variants with BatchNorm or Batch Renorm")
        # Without --bn-momentum (or for a variant without moving statistics), the variant's own:
        # Keras' 0.99 unless its bn_momentum field says otherwise.
        own = (getattr(variant.model, "bn_momentum", KERAS_BN_MOMENTUM),)
        momenta = grid.bn_momenta if grid.bn_momenta and uses_momentum(variant) else own
        ghosts = grid.ghost_batches if grid.ghost_batches and uses_momentum(variant) else (None,)
        for order, ghost, b in itertools.product(grid.batch_orders, ghosts, grid.batch_sizes):
            epochs = grid.epochs_for(b, train_examples)
            # The program's shape: the optimizer, with a weight-decay term if any configuration decays.
            protocol = train.Protocol(epochs=epochs, batch_size=b, learning_rate=grid.learning_rates[0],
                                      batch_order=order, optimizer=grid.optimizer,
                                      momentum=grid.optimizer_momenta()[0],
                                      weight_decay=max(grid.optimizer_weight_decays()))
            program_variant = with_ghost_batch(variant, ghost)
            program_variant.check_batches(b, train_examples, data_devices)
            axes = {**({"ghost_batch": ghost} if ghost is not None else {}),
                    **({"batch_order": order} if len(grid.batch_orders) > 1 else {})}
            configs = tuple({"learning_rate": grid.learning_rate_for(lr, b), "base_learning_rate": lr,
                             "batch_size": b, "bn_momentum": float(m), "momentum": float(mom),
                             "weight_decay": float(wd), "epochs": epochs,
                             "updates_per_epoch": protocol.updates_per_epoch(train_examples), **axes}
                            for lr in grid.learning_rates for m in momenta for mom in grid.optimizer_momenta()
                            for wd in grid.optimizer_weight_decays())
            out.append(Program(program_variant, protocol, configs))
    return sliced(out, grid.slice)


def grid_positions(grid: Grid, chosen: Sequence[Variant], train_examples: int) -> dict[str, int]:
    """Each summary entry's place in the order a sweep of the whole grid trains and writes it:
    ``run_sweep`` and ``merge`` keep a report in this order however its runs came."""
    whole = dataclasses.replace(grid, slice=None)
    return {label(p.variant.name, c, grid): i for i, (p, c) in
            enumerate((p, c) for p in programs(whole, chosen, train_examples) for c in p.configs)}


def sliced(all_programs: list[Program], which: tuple[int, int] | None) -> list[Program]:
    """The I-th of N slices of the programs' configurations, in the grid's order: contiguous blocks
    whose sizes differ by at most one configuration, each configuration with all its seeds (a
    summary's seeds train together and share their times). Deterministic: every task of a job
    array computes the same split. Programs left without a configuration are dropped."""
    if which is None:
        return all_programs
    index, count = which
    total = sum(len(p.configs) for p in all_programs)
    if count > total:
        raise BnbenchError(f"--slice {index}/{count}: the grid has only {total} configuration"
                           f"{'s' * (total > 1)} to share out; choose N from 1 to {total}")
    start, stop = (index - 1) * total // count, index * total // count
    out, position = [], 0
    for program in all_programs:
        mine = program.configs[max(0, start - position):max(0, stop - position)]
        position += len(program.configs)
        if mine:
            out.append(dataclasses.replace(program, configs=mine))
    return out


def number(value: float) -> str:
    """``0.01``, ``1e-05``: short, unless that would make two different values read the same."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def label(variant: str, config: dict, grid: Grid) -> str:
    """A summary entry's name: the variant and the values the grid varies (the learning rate always)."""
    parts = [f"lr={number(config['base_learning_rate'])}"]
    if len(grid.batch_sizes) > 1:
        parts.append(f"bs={config['batch_size']}")
    if len(grid.bn_momenta) > 1:
        parts.append(f"m={number(config['bn_momentum'])}")
    if "ghost_batch" in config:
        parts.append(f"gb={config['ghost_batch']}")
    if "batch_order" in config:
        parts.append(f"order={config['batch_order']}")
    if len(grid.momenta) > 1:
        parts.append(f"momentum={number(config['momentum'])}")
    if len(grid.weight_decays) > 1:
        parts.append(f"wd={number(config['weight_decay'])}")
    return f"{variant} {' '.join(parts)}"


def sweep_protocol(dataset: Dataset, grid: Grid, parallel: DataParallel = SINGLE_DEVICE) -> dict:
    """What every configuration shares (the run protocol less what each run's ``config`` holds)."""
    return experiment.protocol_model(dataset, grid.seeds, parallel, batch_order=shared_order(grid),
                                     training=grid.training(), precision=grid.precision).dump()


def shared_order(grid: Grid) -> str | None:
    """The batch order every configuration shares, which the protocol records; None where the
    sweep varies it (each run's ``config`` then holds its own)."""
    return grid.batch_orders[0] if len(grid.batch_orders) == 1 else None


def make_sweep_report(dataset: Dataset, grid: Grid, runs: list[dict], summary: dict, command: str | None,
                      run_id: str, created: str, parallel: DataParallel = SINGLE_DEVICE) -> dict:
    """The sweep report (``model.SweepReport``), built and checked, as the JSON it is written as."""
    report = model.SweepReport(
        **experiment.envelope(SWEEP_KIND, experiment.protocol_model(dataset, grid.seeds, parallel,
                                                                    batch_order=shared_order(grid),
                                                                    training=grid.training(),
                                                                    precision=grid.precision),
                              command, run_id, created),
        sweep=grid.record(), runs=runs, summary=summary)
    return report.dump()


def check_resumable(previous: dict, dataset: Dataset, grid: Grid, parallel: DataParallel = SINGLE_DEVICE) -> None:
    """A report can be resumed only by the sweep that wrote it: the same grid, data and seeds."""
    if previous.get("kind") != SWEEP_KIND:
        raise BnbenchError("--resume: the report at --out is not a sweep report; name a new --out")
    if previous["sweep"] != grid.record():
        differ = [k for k, v in grid.record().items() if previous["sweep"].get(k) != v]
        raise BnbenchError(f"--resume: the report at --out was made with other arguments ({', '.join(differ)} "
                           "differ); rerun with its arguments, or name a new --out")
    mine = sweep_protocol(dataset, grid, parallel)
    differ = [k for k in ("dataset", "order", "train_examples", "validation_examples", "test_examples", "optimizer",
                          "precision")
              if model.protocol_value(previous["protocol"], k) != mine.get(k)]
    if differ:
        raise BnbenchError(f"--resume: the report at --out was trained on other data ({', '.join(differ)} differ); "
                           "use its --dataset and --data-dir, or name a new --out")
    if not parallel.recorded_in(previous["protocol"]):
        theirs = previous["protocol"]
        raise BnbenchError(f"--resume: the report at --out was trained with --data-parallel "
                           f"{theirs.get('data_parallel', 1)} --batch-stats {theirs.get('batch_stats', 'sync')}; "
                           "rerun with those, or name a new --out")


def run_sweep(grid: Grid, chosen: Sequence[Variant], dataset: Dataset, data: train.DeviceData,
              write: Callable[[dict], None], previous: dict | None = None, command: str | None = None,
              on_program: Callable[[Program, int, int], None] | None = None,
              parallel: DataParallel = SINGLE_DEVICE, done=None) -> dict:
    """Trains every program the report lacks, writing the report after each; returns the report.
    ``done``: the summary entries the report holds, where only another process read it (a job of
    several resumes what process 0's report lacks)."""
    train_examples = len(dataset.train_labels)
    runs = list(previous["runs"]) if previous else []
    summary = dict(previous["summary"]) if previous else {}
    run_id = previous["run_id"] if previous else experiment.new_run_id()
    created = previous["created"] if previous else datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    done = set(summary) | set(done or ())
    everything = programs(grid, chosen, train_examples)
    # A program resumed trains only the configurations the report lacks (a merged job array's slices
    # may end inside one), and the report keeps the grid's order however its runs came.
    todo = [dataclasses.replace(p, configs=missing) for p in everything
            if (missing := tuple(c for c in p.configs if label(p.variant.name, c, grid) not in done))]
    position = grid_positions(grid, chosen, train_examples)

    def in_grid_order(runs: list[dict], summary: dict) -> tuple[list[dict], dict]:
        def place(name):
            return position.get(name, len(position))
        ordered = dict(sorted(summary.items(), key=lambda item: place(item[0])))
        return sorted(runs, key=lambda r: place(label(r["variant"], r["config"], grid)) if r.get("config")
                      else len(position)), ordered

    for i, program in enumerate(todo):
        if on_program is not None:
            on_program(program, i, len(todo))
        result = experiment.run_variant(program.variant, program.protocol, data, list(grid.seeds), target=grid.target,
                                    configs=program.configs, eval_every=grid.eval_every, parallel=parallel)
        names = [label(program.variant.name, c, grid) for c in program.configs]
        runs = [r for r in runs if not (r["variant"] == program.variant.name and r.get("config") in program.configs)]
        runs += result["runs"]
        for name, config, entry in zip(names, program.configs, result["summaries"]):
            if "bn_momentum" in entry["model"]:  # the model as trained: the configuration's momentum
                entry["model"] = {**entry["model"], "bn_momentum": config["bn_momentum"]}
            summary[name] = {"variant": program.variant.name, "config": config, **entry}
        runs, summary = in_grid_order(runs, summary)
        write(make_sweep_report(dataset, grid, list(runs), dict(summary), command, run_id, created, parallel))
    return make_sweep_report(dataset, grid, runs, summary, command, run_id, created, parallel)
