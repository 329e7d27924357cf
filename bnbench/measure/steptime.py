"""Step-time measurement: one compiled training update, timed with the device synchronised.

Compile time is measured apart (ahead-of-time compilation), FLOPs come from XLA's cost analysis
of the compiled step, and the matmul floor of the same step is timed on the same device in the
same process, so a report from any hardware reads as a fraction of what that hardware can do.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np

from bnbench.engine import train
from bnbench.measure import floor
from bnbench.models.variants import Variant
from bnbench.parallel.devices import SINGLE_DEVICE, DataParallel
from bnbench.record import stats

FLOOR_REPEATS = 200  # floor steps per timing: long enough to swamp the dispatch of one program


def _step_and_state(variant: Variant, image_shape: tuple, batch_size: int, seed: int,
                    protocol: train.Protocol | None):
    """The variant's train step with the protocol's optimizer (plain SGD at 1e-3 by default) at
    ``batch_size``, and its initial state from ``seed``."""
    protocol = dataclasses.replace(protocol or train.Protocol(), batch_size=batch_size)
    step = functools.partial(train.train_step, variant.model, protocol.transform())
    return step, train.initializer(variant.model, image_shape, protocol.kind)(jax.random.PRNGKey(seed))


class StepProgram:
    """A variant's compiled train step on a fixed batch, callable repeatedly; state is threaded through."""

    def __init__(self, variant: Variant, data: train.DeviceData, batch_size: int = 32, seed: int = 0,
                 protocol: train.Protocol | None = None):
        """``protocol``: its optimizer and numbers (plain SGD at 1e-3 by default); its batch size is ``batch_size``."""
        step, self.state = _step_and_state(variant, tuple(data.train_images.shape[1:]), batch_size, seed, protocol)
        self.images = data.train_images[:batch_size]
        self.labels = data.train_labels[:batch_size]
        if self.labels.shape[0] < batch_size:
            raise ValueError(f"the training split has fewer than {batch_size} examples")
        try:
            self.products, self.floor_unavailable = floor.matmuls(step, self.state, self.images, self.labels), None
        except floor.FloorUnavailable as e:
            self.products, self.floor_unavailable = {}, str(e)
        start = time.perf_counter()
        self._compiled = jax.jit(step, donate_argnums=0).lower(self.state, self.images, self.labels).compile()
        self.compile_time_s = time.perf_counter() - start
        self.flops = floor.compiled_flops(self._compiled)

    def __call__(self) -> None:
        self.state, metrics = self._compiled(self.state, self.images, self.labels)
        jax.block_until_ready((self.state, metrics))

    def floor_time_s(self, repeats: int = 5) -> float | None:
        """Median time of this step's matmuls alone, per step, run FLOOR_REPEATS times in one scan;
        None where the step computes something the floor cannot time."""
        if self.floor_unavailable is not None:
            return None
        timing = floor.time_floor({m: FLOOR_REPEATS * c for m, c in self.products.items()}, repeats=repeats)
        return timing["median_s"] / FLOOR_REPEATS


class RoundProgram:
    """A variant's compiled round of updates: its train step scanned over the batches of ``images``
    in order, in one program synchronised once per call (how an epoch runs its updates, without the
    shuffle and the evaluation); state is threaded through, and each call's wall time kept."""

    def __init__(self, variant: Variant, images: np.ndarray, labels: np.ndarray, batch_size: int = 32,
                 seed: int = 0, protocol: train.Protocol | None = None):
        self.steps = len(images) // batch_size
        if self.steps < 1:
            raise ValueError(f"a round needs a batch of {batch_size} examples; got {len(images)}")
        step, self.state = _step_and_state(variant, tuple(images.shape[1:]), batch_size, seed, protocol)
        shape = (self.steps, batch_size)
        self.images = jax.device_put(np.asarray(images)[:self.steps * batch_size].reshape(*shape, *images.shape[1:]))
        self.labels = jax.device_put(np.asarray(labels)[:self.steps * batch_size].reshape(shape))

        def round_(state, images, labels):
            return jax.lax.scan(lambda s, batch: step(s, *batch), state, (images, labels))

        self._compiled = jax.jit(round_, donate_argnums=0).lower(self.state, self.images, self.labels).compile()
        self.times: list[float] = []

    def __call__(self) -> None:
        start = time.perf_counter()
        self.state, metrics = self._compiled(self.state, self.images, self.labels)
        jax.block_until_ready((self.state, metrics))
        self.times.append(time.perf_counter() - start)


class EpochProgram:
    """A variant's compiled epoch (updates and validation) for ``num_seeds`` runs trained together,
    laid out over the devices as ``bnbench run`` would; each call trains the next epoch, synchronised."""

    def __init__(self, variant: Variant, protocol: train.Protocol, data: train.DeviceData, num_seeds: int,
                 learning_rates: list[float] | None = None, parallel: DataParallel = SINGLE_DEVICE,
                 momenta: list[float] | None = None, weight_decays: list[float] | None = None):
        """``num_seeds`` seeds at the protocol's numbers or, with ``learning_rates`` (and, if given,
        ``momenta`` and ``weight_decays``, one each per run), one run of seed 0 per configuration: a
        sweep's program; ``parallel``: each batch split over devices."""
        self.trainer = train.Trainer(variant.model, protocol, data, num_seeds, parallel=parallel)
        seeds = [0] * num_seeds if learning_rates else range(num_seeds)
        hyper = self.trainer.hyperparams(learning_rates, momenta=momenta, weight_decays=weight_decays)
        self.state, self._shuffle_roots, self.hyperparams = self.trainer.start(seeds, hyper if learning_rates else None)
        self.epochs = 0
        self.times: list[float] = []  # wall time of each call's epoch

    def __call__(self) -> None:
        keys = train.epoch_keys(self._shuffle_roots, self.epochs)
        self.state, _, seconds = self.trainer.run_epoch(self.state, keys, self.hyperparams)
        self.epochs += 1
        self.times.append(seconds)


def seed_scaling_info(one_seed: EpochProgram, seeds: EpochProgram) -> dict:
    """What K seeds trained together cost against one seed, from epochs timed in alternation.

    ``ratio`` is the median over rounds of (K seeds' epoch / the one seed's epoch just before it),
    so that a change in machine load between rounds cancels out; 1.0 would be free seeds and K
    no gain over training them one after another.
    """
    ratios = alternating_ratios(one_seed, seeds)
    return {
        "seeds": seeds.trainer.num_seeds,
        "seed_devices": seeds.trainer.seed_devices,
        "one_seed_epoch_s": stats.spread(one_seed.times),
        "seeds_epoch_s": stats.spread(seeds.times),
        "ratio": float(np.median(ratios)),
        "ratios": ratios,
    }


def alternating_ratios(base: EpochProgram, other: EpochProgram) -> list[float]:
    """Each round's epoch of ``other`` over the epoch of ``base`` timed just before it."""
    if len(base.times) != len(other.times):
        raise ValueError("time the two programs in alternation, as many epochs each")
    return [o / b for o, b in zip(other.times, base.times)]


def sweep_cost_info(seeds: EpochProgram, configs: EpochProgram) -> dict:
    """What N configurations of one seed cost against N seeds of one configuration, per epoch of
    N runs, from epochs timed in alternation: the median ratio (1.0: a configuration costs what a
    seed does)."""
    ratios = alternating_ratios(seeds, configs)
    return {"runs": seeds.trainer.num_seeds, "seed_devices": seeds.trainer.seed_devices,
            "seeds_epoch_s": stats.spread(seeds.times), "configs_epoch_s": stats.spread(configs.times),
            "ratio": float(np.median(ratios)), "ratios": ratios}


def data_parallel_point(program: EpochProgram) -> dict:
    """One point of the data-parallel scaling curve: an epoch's time (median and spread of the
    timed epochs), per update, and the training examples per second it gives."""
    trainer = program.trainer
    updates = trainer.protocol.updates_per_epoch(int(trainer.data.train_labels.shape[0]))
    epoch = stats.spread(program.times)
    return {"devices": trainer.parallel.devices, "batch_stats": trainer.parallel.batch_stats,
            "norm": getattr(trainer.model, "norm", None),
            "batch_size": trainer.protocol.batch_size, "epoch_s": epoch, "update_s": epoch["median"] / updates,
            "examples_per_s": int(trainer.data.train_labels.shape[0]) / epoch["median"]}


def interleaved_times(programs: dict[str, StepProgram], rounds: int) -> dict[str, list[float]]:
    """Time each program once per round, round-robin, so that a noisy machine slows all alike."""
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(rounds):
        for name, program in programs.items():
            start = time.perf_counter()
            program()
            times[name].append(time.perf_counter() - start)
    return times


def step_extra_info(program: StepProgram, median_s: float, floor_s: float | None) -> dict:
    """The figures a step-time benchmark records beside pytest-benchmark's own statistics."""
    return {
        "compile_time_s": program.compile_time_s,
        "flops_per_update": program.flops,
        "matmul_flops_per_update": floor.total_flops(program.products),
        "achieved_flops_per_s": program.flops / median_s if program.flops else None,
        "floor_time_s": floor_s,
        "ratio_to_floor": median_s / floor_s if floor_s is not None else None,
        **({"floor_unavailable": program.floor_unavailable} if program.floor_unavailable else {}),
    }

