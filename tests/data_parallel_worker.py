"""Checks of data-parallel training that need their own number of CPU devices, run as a script in
a subprocess by tests/test_data_parallel.py: ``python data_parallel_worker.py CHECK DEVICES``. Each
check prints one JSON line of the largest differences it found."""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[2]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec  # noqa: E402

from bnbench.data.synthetic import synthetic_dataset  # noqa: E402
from bnbench.engine import train  # noqa: E402
from bnbench.models import variants  # noqa: E402
from bnbench.parallel import devices  # noqa: E402


def largest_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def data():
    # 1,000 training examples: 31 full batches and a last one of 8, which splits over 2 and 4 too.
    return train.DeviceData.from_dataset(synthetic_dataset(train=1000, validation=200, test=200))


def as_float64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32 else a, tree)


def one_epoch_float64(trainer: train.Trainer, seeds, repeats: int = 4) -> tuple[dict, list[dict]]:
    """What float32 promises for the one-device epoch of ``seeds`` (``trainer``'s, already compiled),
    measured two ways:

    - the same epoch in float64 (the same initial weights, shuffles and batches, every product and
      sum in double precision): the exact computation that every float32 run rounds;
    - ``repeats`` float32 epochs from initial weights each moved by one unit in the last place, in a
      random direction: how far rounding-sized differences carry by the end of the epoch (through
      ReLU and max-pool kinks, a rounding can choose another path)."""
    state, roots, hyperparams = trainer.start(seeds)  # float32 initial weights, as both runs have
    keys = train.epoch_keys(roots, 0)
    rng = np.random.default_rng(0)

    def one_ulp(a):
        a = np.asarray(a)
        if a.dtype != np.float32:
            return a
        return np.where(rng.random(a.shape) < 0.5, np.nextafter(a, -np.inf), np.nextafter(a, np.inf))

    perturbed = []
    for _ in range(repeats):  # the one-device run's own compiled epoch
        s, metrics, _ = trainer.run_epoch(jax.tree.map(one_ulp, state), keys, hyperparams)
        perturbed.append({"state": s, "history": [metrics]})
    with jax.enable_x64(True):  # the same program traced anew for float64
        s, metrics = trainer.epoch_program(as_float64(state), keys, hyperparams, *trainer._train_val())
        exact = {"state": jax.tree.map(np.asarray, s), "history": [jax.tree.map(np.asarray, metrics)]}
    return exact, perturbed


def sync_equals_one_device(variant: str, num_seeds: int, data_parallel: int) -> dict:
    """An epoch (32 updates) of ``variant`` on one device and data-parallel with synchronized
    statistics, the same global batches, and the one-device epoch in float64. Per quantity (losses,
    weights, moving statistics), the largest difference between the two float32 runs
    (``one_vs_many``), each one's largest difference from float64 (``one_vs_exact``,
    ``many_vs_exact``), from one-ulp perturbed starts (``one_vs_one_ulp``), and local statistics'
    difference from one device (``one_vs_local``)."""
    d, protocol = data(), train.Protocol(epochs=1, batch_size=32)
    seeds = list(range(num_seeds))
    model = variants.get(variant).model
    one_trainer = train.Trainer(model, protocol, d, num_seeds, devices=jax.devices()[:1])
    one = train.fit(one_trainer, seeds)
    parallel = devices.DataParallel(data_parallel, "sync")
    many_trainer = train.Trainer(model, protocol, d, num_seeds, parallel=parallel)
    many = train.fit(many_trainer, seeds)
    # The same layout with each shard's own statistics: a different model, which the bound must
    # tell apart from one device (else it could not fail).
    local = train.fit(train.Trainer(model, protocol, d, num_seeds, parallel=devices.DataParallel(data_parallel,
                                                                                                 "local")), seeds)
    exact, perturbed = one_epoch_float64(one_trainer, seeds)

    def quantities(run):
        return {"loss": [h["train_loss"] for h in run["history"]], "val_loss": [h["val_loss"] for h in run["history"]],
                "params": run["state"].params, "batch_stats": run["state"].batch_stats}

    one, many, local, exact = quantities(one), quantities(many), quantities(local), quantities(exact)
    perturbed = [quantities(p) for p in perturbed]
    return {"mesh": dict(many_trainer.mesh.shape),
            **{key: {"one_vs_many": largest_difference(one[key], many[key]),
                     "one_vs_local": largest_difference(one[key], local[key]),
                     "one_vs_exact": largest_difference(one[key], exact[key]),
                     "many_vs_exact": largest_difference(many[key], exact[key]),
                     "one_vs_one_ulp": max(largest_difference(one[key], p[key]) for p in perturbed),
                     "largest": largest_difference(exact[key], jax.tree.map(np.zeros_like, exact[key]))}
               for key in one}}


def local_equals_shards(variant: str, data_parallel: int, steps: int = 3) -> dict:
    """``steps`` data-parallel updates with local statistics against the same updates computed
    directly: each shard's own one-device step from the shared state, then the shards' new weights
    and moving statistics averaged (for SGD, averaging the weights is averaging the gradients)."""
    d = data()
    model = variants.get(variant).model
    tx = train.Protocol().transform()
    state = train.initializer(model, tuple(d.train_images.shape[1:]))(jax.random.PRNGKey(0))
    parallel = devices.DataParallel(data_parallel, "local")
    mesh = Mesh(np.array(jax.devices()[:data_parallel]), (devices.DATA_AXIS,))
    shard, whole = PartitionSpec(devices.DATA_AXIS), PartitionSpec()
    step = jax.jit(jax.shard_map(lambda s, x, y: train.train_step(model, tx, s, x, y, parallel), mesh=mesh,
                                 in_specs=(whole, shard, shard), out_specs=whole, check_vma=False))
    single = jax.jit(lambda s, x, y: train.train_step(model, tx, s, x, y))
    expected, found = state, state
    worst = {"params": 0.0, "batch_stats": 0.0, "loss": 0.0, "correct": 0}
    for i in range(steps):
        images, labels = d.train_images[32 * i:32 * (i + 1)], d.train_labels[32 * i:32 * (i + 1)]
        found, (loss, correct) = step(found, images, labels)
        shards = [single(expected, x, y) for x, y in zip(np.split(np.asarray(images), data_parallel),
                                                         np.split(np.asarray(labels), data_parallel))]
        expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *[s for s, _ in shards])
        expected = expected.replace(step=shards[0][0].step)
        worst["params"] = max(worst["params"], largest_difference(expected.params, found.params))
        worst["batch_stats"] = max(worst["batch_stats"], largest_difference(expected.batch_stats, found.batch_stats))
        worst["loss"] = max(worst["loss"], abs(float(loss) - sum(float(shard_loss) for _, (shard_loss, _) in shards)))
        worst["correct"] = max(worst["correct"], abs(int(correct) - sum(int(c) for _, (_, c) in shards)))
    # How far local statistics are from one device's: that the shards' statistics really differ.
    one_device, _ = single(state, d.train_images[:32], d.train_labels[:32])
    first, _ = step(state, d.train_images[:32], d.train_labels[:32])
    worst["vs_one_device"] = largest_difference(one_device.batch_stats, first.batch_stats)
    return worst


def ghost_equals_local(variant: str, ghost_batch: int, data_parallel: int) -> dict:
    """An epoch of ``variant:ghost_batch=G`` on one device against ``variant`` data-parallel over
    ``data_parallel`` = B/G devices with local statistics: the same groups of the same batches
    (1,024 examples: 32 full batches, no partial one, which the two would split differently). Per
    quantity, their largest difference (``ghost_vs_local``), the ghost run's from float64 and from
    one-ulp perturbed starts (what float32 promises, as ``sync_equals_one_device``), and from the
    whole batch's statistics (``ghost_vs_whole``: that the groups really differ from it)."""
    d = train.DeviceData.from_dataset(synthetic_dataset(train=1024, validation=200, test=200))
    protocol = train.Protocol(epochs=1, batch_size=32)
    ghost_trainer = train.Trainer(variants.get(f"{variant}:ghost_batch={ghost_batch}").model, protocol, d, 1,
                                  devices=jax.devices()[:1])
    ghost = train.fit(ghost_trainer, [0])
    local = train.fit(train.Trainer(variants.get(variant).model, protocol, d, 1,
                                    parallel=devices.DataParallel(data_parallel, "local")), [0])
    whole = train.fit(train.Trainer(variants.get(variant).model, protocol, d, 1, devices=jax.devices()[:1]), [0])
    exact, perturbed = one_epoch_float64(ghost_trainer, [0])

    def quantities(run):
        return {"loss": [h["train_loss"] for h in run["history"]], "val_loss": [h["val_loss"] for h in run["history"]],
                "params": run["state"].params, "batch_stats": run["state"].batch_stats}

    ghost, local, whole, exact = quantities(ghost), quantities(local), quantities(whole), quantities(exact)
    perturbed = [quantities(p) for p in perturbed]
    return {key: {"ghost_vs_local": largest_difference(ghost[key], local[key]),
                  "ghost_vs_whole": largest_difference(ghost[key], whole[key]),
                  "one_vs_exact": largest_difference(ghost[key], exact[key]),
                  "one_vs_one_ulp": max(largest_difference(ghost[key], p[key]) for p in perturbed),
                  "largest": largest_difference(exact[key], jax.tree.map(np.zeros_like, exact[key]))}
            for key in ghost}


if __name__ == "__main__":
    check, args = sys.argv[1], sys.argv[3:]
    if check == "sync":
        print(json.dumps(sync_equals_one_device(args[0], int(args[1]), int(args[2]))))
    elif check == "local":
        print(json.dumps(local_equals_shards(args[0], int(args[1]))))
    elif check == "ghost":
        print(json.dumps(ghost_equals_local(args[0], int(args[1]), int(args[2]))))
    else:
        raise SystemExit(f"unknown check {check!r}")
