"""Where seeds train: spread over the devices JAX has, one share per device, in parallel.

On a CPU, JAX has one device by default, and a training step of this size keeps about one core
busy. ``expose_cpu_devices`` asks JAX for several CPU devices, each run by its own thread, so that
the seeds of one run train on all cores at once. By default bnbench asks for ``cpu_devices_for``
the run: at least one device per core, as many as split the seeds evenly. More devices than cores
slow the work on each one (JAX then runs more threads than there are cores): a multi-seed run
gains more than that, a step timing only loses, so the benchmarks stop at one device per core.
GPUs are left alone. The measurements behind these choices are in docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnbench.config import BATCH_STATS
from bnbench.errors import BnbenchError

SEED_AXIS = "seed"
DATA_AXIS = "data"
_XLA_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def expose_cpu_devices(count: int) -> None:
    """Asks JAX for ``count`` CPU devices. Must run before JAX starts its backends; leaves a count
    already set through XLA_FLAGS (the user's choice) alone."""
    if _XLA_FLAG in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:  # JAX has already started: too late to change the device count
        raise BnbenchError(f"cannot split the CPU into {count} devices after JAX has started; "
                           "pass --cpu-devices before anything else runs") from e


def cpu_devices_for(seed_counts, cores: int | None = None) -> int:
    """The CPU devices to ask for, for runs of these seed counts: for each count, the fewest devices
    that split its seeds evenly and still give every core one (5 seeds on 2 cores: 5 devices, one
    seed each, rather than 1 device with all 5); the most any count asks for."""
    cores = usable_cores() if cores is None else cores
    return max(_cpu_devices_for(n, cores) for n in seed_counts)


def cpu_devices_with_side_runs(seeds: int, side_counts=(), cores: int | None = None) -> int:
    """The CPU devices for ``seeds`` trained together, laid out exactly as ``bnbench run --seeds``
    lays them out (``cpu_devices_for``: so that the harness's epoch times compare with run's), and
    enough for side benchmarks of ``side_counts`` runs, but for those no more than one per core:
    more devices than cores slow every device's work, the one-seed step times included."""
    cores = usable_cores() if cores is None else cores
    side = min(cpu_devices_for(side_counts, cores), cores) if side_counts else 1
    return max(cpu_devices_for([seeds], cores), side)


def _cpu_devices_for(num_seeds: int, cores: int) -> int:
    even = [d for d in range(1, num_seeds + 1) if num_seeds % d == 0]
    fewest = min(d for d in even if d >= min(cores, num_seeds))
    # 4 devices per core (8 seeds on 2 cores) trained about as fast as 1 per core; far more would each
    # hold a copy of the dataset and crowd the cores with threads: then vmap bigger shares instead.
    return fewest if fewest <= 4 * cores else seed_shares(num_seeds, cores)


def seed_shares(num_seeds: int, num_devices: int) -> int:
    """How many devices the seeds go to: the most that split them evenly, at most one per seed."""
    return max(d for d in range(1, min(num_devices, num_seeds) + 1) if num_seeds % d == 0)


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Each global batch split over ``devices`` devices along the mesh's data axis.

    ``batch_stats``: ``sync``, BatchNorm's statistics over the whole global batch (a collective
    mean and variance, so N devices compute what one device does on the same batch), or ``local``
    ("ghost" BatchNorm: each device normalizes its own shard; the moving statistics are averaged
    over the devices after every update). Layers without batch statistics ignore it.
    """

    devices: int = 1
    batch_stats: str = "sync"

    def __post_init__(self):
        if not isinstance(self.devices, int) or self.devices < 1:
            raise BnbenchError(f"--data-parallel must be a whole number of devices, at least 1, got {self.devices!r}")
        if self.batch_stats not in BATCH_STATS:
            raise BnbenchError(f"--batch-stats {self.batch_stats!r}: choose sync or local")
        if self.batch_stats == "local" and self.devices == 1:
            raise BnbenchError("--batch-stats local needs --data-parallel 2 or more: on one device every "
                               "BatchNorm's statistics are the whole batch's")

    @property
    def axis(self) -> str | None:
        """The mesh axis that splits the batch, None on one device (nothing to split)."""
        return DATA_AXIS if self.devices > 1 else None

    def check_batches(self, batch_size: int, train_examples: int) -> None:
        """Every batch of an epoch, the last, partial one too, must split evenly over the devices:
        one line naming the batch that does not, and what would."""
        tail = train_examples % batch_size
        for size, what in ((batch_size, f"the batch size {batch_size}"),
                           (tail, f"the last batch of each epoch ({train_examples} examples in batches of "
                                  f"{batch_size} leave {tail})")):
            if size and size % self.devices:
                fits = [d for d in range(1, batch_size + 1) if batch_size % d == 0 and tail % d == 0]
                raise BnbenchError(f"--data-parallel {self.devices}: {what} does not split evenly over "
                                   f"{self.devices} devices; choose a device count that divides every batch "
                                   f"({', '.join(map(str, fits))}), or another --batch-size")

    def protocol_fields(self) -> dict:
        """How a report's protocol records this layout (absent in older reports: one device, sync)."""
        return {"data_parallel": self.devices, "batch_stats": self.batch_stats}

    def recorded_in(self, protocol: dict) -> bool:
        """Whether ``protocol`` was trained with this layout."""
        defaults = SINGLE_DEVICE.protocol_fields()
        return {k: protocol.get(k, v) for k, v in defaults.items()} == self.protocol_fields()


SINGLE_DEVICE = DataParallel()


def seed_mesh(num_seeds: int, devices=None, data_parallel: int = 1, batch_sizes=()) -> Mesh | None:
    """A mesh over ``seed_shares`` of the devices, or None when that is one device. With
    ``data_parallel`` N > 1, a mesh of seeds x data: each share of seeds on N devices that split its
    batches, as many shares as the devices allow and split the seeds evenly.

    In a job of several processes, every share of the devices instead, whatever the number of runs:
    each process must hold part of the mesh (one left out would wait on the others), and the runs
    are padded to fill it (``trained_runs``). ``batch_sizes`` only sharpens the error's advice."""
    devices = list(devices if devices is not None else jax.devices())
    if len(devices) < data_parallel:
        raise BnbenchError(f"--data-parallel {data_parallel} needs {data_parallel} devices, but JAX has "
                           f"{len(devices)} ({devices[0].platform}): on a CPU pass --cpu-devices {data_parallel} "
                           "(or more); elsewhere use at most the devices there are")
    if len({d.process_index for d in devices}) > 1:
        shares = len(devices) // data_parallel
        mesh = Mesh(np.array(devices[:shares * data_parallel]).reshape(shares, data_parallel),
                    (SEED_AXIS, DATA_AXIS)) if data_parallel > 1 else Mesh(np.array(devices), (SEED_AXIS,))
        _check_spans_processes(mesh, devices, data_parallel, batch_sizes)
        return mesh
    if data_parallel == 1:
        shares = seed_shares(num_seeds, len(devices))
        return Mesh(np.array(devices[:shares]), (SEED_AXIS,)) if shares > 1 else None
    shares = seed_shares(num_seeds, len(devices) // data_parallel)
    grid = np.array(devices[:shares * data_parallel]).reshape(shares, data_parallel)
    return Mesh(grid, (SEED_AXIS, DATA_AXIS))


def trained_runs(num_runs: int, mesh: Mesh | None) -> int:
    """How many runs are trained for ``num_runs``: padded up to a multiple of the mesh's seed shares,
    so that every device trains as many (the padding repeats the last run and is discarded after
    training; it costs each device at most one run's time). Without padding where the shares split
    the runs evenly, as they always do in one process."""
    shares = seed_devices(mesh)
    return -(-num_runs // shares) * shares


def _check_spans_processes(mesh: Mesh, devices, data_parallel: int, batch_sizes=()) -> None:
    """In a job of several processes, every process must hold part of the mesh: one left out would
    have nothing to compute, and its peers would wait on it. Says which --data-parallel would do."""
    processes = {d.process_index for d in devices}
    used = {d.process_index for d in mesh.devices.flat}
    if used == processes:
        return
    reaching = [n for n in range(1, len(devices) + 1)
                if {d.process_index for d in devices[:len(devices) // n * n]} == processes
                and all(b % n == 0 for b in batch_sizes)]
    raise BnbenchError(f"--data-parallel {data_parallel} over the job's {len(devices)} devices "
                       f"({len(processes)} processes) leaves process {min(processes - used)} without a device: "
                       f"pass --data-parallel {' or '.join(map(str, reaching))}, or --cpu-devices so that the "
                       f"devices of all processes are a multiple of {data_parallel}")


def seeds_one_after_another(mesh: Mesh | None) -> bool:
    """Whether each device of ``mesh`` should train its seeds one after another rather than
    batched with vmap: yes where the devices are parts of one CPU.

    Why: batching buys a CPU core nothing here (the big matmuls already run near the core's peak),
    while one seed at a time keeps that seed's weights (1 MB) in the core's cache instead of four
    seeds' (measured in docs/performance.md). On one device vmap stays, since its bigger
    operations use every core, and on a GPU batching is what makes seeds cheap.
    """
    return mesh is not None and all(d.platform == "cpu" for d in mesh.devices.flat)


def seed_devices(mesh: Mesh | None) -> int:
    """How many shares the seeds are split into: the mesh's seed axis."""
    return mesh.shape[SEED_AXIS] if mesh is not None else 1


def over_mesh(fn, mesh: Mesh | None, in_axes, out_axis: int | None = 0):
    """``fn`` (already mapped over its share of seeds) run on every device of ``mesh``, arguments
    with in_axis 0 split along the seed axis and the others whole on each device; the results are
    joined along the seed axis (``out_axis=0``) or each device's kept as is (``None``)."""
    if mesh is None:
        return fn
    specs = tuple(PartitionSpec(SEED_AXIS) if axis == 0 else PartitionSpec() for axis in in_axes)
    # check_vma=False: the per-seed scan carries start as constants, which the check would call
    # replicated, while the seeds' results are not; nothing crosses devices, so nothing to check.
    out_specs = PartitionSpec(SEED_AXIS) if out_axis == 0 else PartitionSpec()
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=out_specs, check_vma=False)


def replicate(tree, mesh: Mesh | None):
    """``tree`` placed whole on every device of ``mesh`` once, so epochs do not copy it again."""
    return place(tree, mesh, PartitionSpec())


def place(tree, mesh: Mesh | None, spec: PartitionSpec):
    """``tree`` laid out over ``mesh`` as ``spec`` says. Where the mesh spans several processes,
    each process holds the whole value (the same on every process: data each loaded, keys from
    the same seeds) and gives its devices their parts."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, spec)
    if all(d.process_index == jax.process_index() for d in mesh.devices.flat):
        return jax.device_put(tree, sharding)

    def global_array(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(global_array, tree)


def fetch(tree):
    """``tree``'s arrays as NumPy arrays on this process, gathered from every process where the
    arrays span several."""
    leaves = jax.tree.leaves(tree)
    if all(getattr(x, "is_fully_addressable", True) or getattr(x, "is_fully_replicated", False) for x in leaves):
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)
