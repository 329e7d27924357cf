"""Training: pure functions of explicit state, composed into one compiled program per epoch.

``train_step`` is one SGD update; ``train_epoch`` scans it over a shuffled epoch on the device;
``epoch`` adds validation. ``Trainer`` compiles the epoch once (ahead of time, so compile time is
measured apart) for K seeds stacked along a leading axis and trained together with ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnbench import config, options
from bnbench.data.sources import Dataset
from bnbench.errors import BnbenchError
from bnbench.models import normalize
from bnbench.models.norms import MOMENTS, population_statistics
from bnbench.options import check_batch_order, classes_per_batch
from bnbench.parallel import devices as device_lib
from bnbench.parallel.devices import SINGLE_DEVICE, DataParallel


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """What of an optimizer is a program's shape: its kind (``config.OPTIMIZERS``) and whether it has a
    weight-decay term. Its numbers (learning rate, momentum, decay) are each run's data (``Hyperparams``)."""

    name: str = "sgd"
    decays: bool = False  # False: no weight-decay term at all, so that plain SGD is the notebook's to the bit

    def transform(self, learning_rate, momentum, weight_decay) -> optax.GradientTransformation:
        """optax's optimizer with these numbers (Python floats, or a run's scalars inside the program).
        Weight decay is coupled (an L2 term, ``weight_decay * params``, added to the gradient before the
        optimizer) for the SGD family and Adam, decoupled for AdamW (optax's: the weights shrink by
        ``learning_rate * weight_decay * params`` each update, beside Adam's step)."""
        if self.name == "adamw":
            return optax.adamw(learning_rate, b1=momentum, weight_decay=weight_decay if self.decays else 0.0)
        if self.name == "sgd":
            tx = optax.sgd(learning_rate)  # Keras SGD: momentum 0, no Nesterov
        elif self.name in ("momentum", "nesterov"):
            tx = optax.sgd(learning_rate, momentum=momentum, nesterov=self.name == "nesterov")
        elif self.name == "adam":
            tx = optax.adam(learning_rate, b1=momentum)
        else:
            raise BnbenchError(f"--optimizer {self.name!r}: choose one of {', '.join(config.OPTIMIZERS)}")
        if self.decays:
            tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
        return tx


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a model is trained: the notebook's values by default (plain SGD at 1e-3, batch 32, 10 epochs).
    ``momentum`` None is ``config.DEFAULT_MOMENTUM`` where the optimizer has one (0 for plain SGD).
    A sweep's program holds its first configuration's numbers; each run's own are ``Hyperparams``."""

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    batch_order: str = "iid"  # or "classes:K" (see epoch_order)
    optimizer: str = "sgd"
    momentum: float | None = None
    weight_decay: float = 0.0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise BnbenchError(f"{name} must be a positive whole number, got {getattr(self, name)!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise BnbenchError(f"learning rate must be a positive finite number, got {self.learning_rate!r}")
        check_batch_order(self.batch_order)  # its batches against the data's classes: preflight, Trainer
        if self.optimizer not in config.OPTIMIZERS:
            raise BnbenchError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(config.OPTIMIZERS)}")
        if self.momentum is not None and not options.is_momentum(self.momentum):
            raise BnbenchError(f"--momentum {self.momentum:g} {options.NOT_A_MOMENTUM}")
        if not options.is_weight_decay(self.weight_decay):
            raise BnbenchError(f"--weight-decay {self.weight_decay:g} {options.NOT_A_WEIGHT_DECAY}")
        object.__setattr__(self, "momentum", options.resolve_momentum(self.optimizer, self.momentum))

    @property
    def kind(self) -> Optimizer:
        return Optimizer(self.optimizer, self.weight_decay > 0)

    def transform(self) -> optax.GradientTransformation:
        return self.kind.transform(self.learning_rate, self.momentum, self.weight_decay)

    def updates_per_epoch(self, train_examples: int) -> int:
        return -(-train_examples // self.batch_size)  # the last, partial batch is trained on too


@flax.struct.dataclass
class Hyperparams:
    """The numbers a run may have of its own, as data: runs that differ only in these (seeds, a
    sweep of learning rates, momenta, weight decays) train together in one compiled program. Each is
    an array with one entry per run; ``bn_momentum_complement`` is 1 - bn_momentum taken in double
    precision on the host (see ``norms.moving_average``). ``momentum`` is the optimizer's (SGD's, or
    Adam's b1; unused by plain SGD), ``weight_decay`` unused where the program has no decay term."""

    learning_rate: jax.Array
    bn_momentum: jax.Array
    bn_momentum_complement: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array

    @classmethod
    def of(cls, learning_rates: Sequence[float], bn_momenta: Sequence[float], momenta: Sequence[float] | None = None,
           weight_decays: Sequence[float] | None = None) -> "Hyperparams":
        as_f32 = functools.partial(np.asarray, dtype=np.float32)
        zeros = [0.0] * len(learning_rates)
        return cls(learning_rate=as_f32(learning_rates), bn_momentum=as_f32(bn_momenta),
                   bn_momentum_complement=as_f32([1 - float(m) for m in bn_momenta]),
                   momentum=as_f32(zeros if momenta is None else momenta),
                   weight_decay=as_f32(zeros if weight_decays is None else weight_decays))

    def apply(self, model: nn.Module, optimizer: Optimizer = Optimizer()
              ) -> tuple[nn.Module, optax.GradientTransformation]:
        """One run's model and optimizer with these values (scalars, inside the mapped program)."""
        if hasattr(model, "bn_momentum"):
            model = model.clone(bn_momentum=(self.bn_momentum, self.bn_momentum_complement))
        return model, optimizer.transform(self.learning_rate, self.momentum, self.weight_decay)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; passed into each step and returned from it."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                       image_shape: Sequence[int]) -> TrainState:
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


@functools.cache
def initializer(model: nn.Module, image_shape: tuple[int, ...], optimizer: Optimizer = Optimizer()
                ) -> Callable[[jax.Array], TrainState]:
    """``model``'s initial state from a key, compiled once per model, image shape and optimizer kind,
    and shared by every program that trains it (XLA takes longer to compile the random initialisers
    than a training step). An optimizer's initial state depends on its kind, not on its numbers, so
    these are placeholders. Compiled, not eager: run eagerly, flax's initialisers compile each small
    operation on their own."""
    tx = optimizer.transform(1e-3, config.DEFAULT_MOMENTUM, 0.0)
    return jax.jit(functools.partial(create_train_state, model, tx, image_shape=tuple(image_shape)))


def _loss_and_correct(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The one-hot form has the same value as optax's integer-label form, and its gradient
    # (softmax - one_hot) needs no scatter, which saves kernels in every step.
    losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
    return losses, correct


def _after_all(grads):
    """``grads``, each made to depend on all of them (by adding zero times one element of each).

    Why: a weight read by the backward pass (``dx = dy @ W.T``) is updated in place only if XLA
    can see that the update comes after that read; otherwise it copies the weight every step
    (for Dense_0 of seed_bn, a 784x300 copy every step). Every update
    now waits for all the gradients, which together need the whole backward pass. The values are
    unchanged: ``g + 0.0 * x`` is ``g`` for finite ``x``.
    """
    firsts = jnp.stack([jnp.ravel(g)[0] for g in jax.tree.leaves(grads)])
    # One reduction, not a sum of scalars: XLA fuses scalar arithmetic into every update kernel
    # and redoes it per element (a 784x300 update took several times longer); a reduction runs once. Not a
    # dot either, which the matmul floor would count as a product of the model.
    done = jnp.sum(firsts * jnp.zeros_like(firsts))
    return jax.tree.map(lambda g: g + done, grads)


def train_step(model: nn.Module, tx: optax.GradientTransformation, state: TrainState,
               images: jax.Array, labels: jax.Array, parallel: DataParallel = SINGLE_DEVICE
               ) -> tuple[TrainState, tuple[jax.Array, jax.Array]]:
    """One SGD update on a batch of uint8 images; returns the new state, the batch's summed loss
    and its number of correct predictions (both taken before the update, as Keras reports).

    Data-parallel (``parallel.axis``, inside ``shard_map``): ``images`` are this device's shard of
    the global batch. The gradients are averaged over the devices (equal shards: the global batch's
    mean gradient), loss and correct summed; BatchNorm reduces its statistics over the devices
    (``sync``) or keeps its shard's, its moving statistics then averaged (``local``)."""
    axis = parallel.axis
    if axis is not None and parallel.batch_stats == "sync" and hasattr(model, "bn_axis_name"):
        model = model.clone(bn_axis_name=axis)

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      normalize(images), train=True, mutable=["batch_stats"])
        losses, correct = _loss_and_correct(logits, labels)
        return jnp.mean(losses), (updates.get("batch_stats", {}), jnp.sum(losses), correct)

    grads, (batch_stats, loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis is not None:
        grads, (loss_sum, correct) = jax.lax.pmean(grads, axis), jax.lax.psum((loss_sum, correct), axis)
        if parallel.batch_stats == "local":
            batch_stats = jax.lax.pmean(batch_stats, axis)
    grads = _after_all(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)
    return state, (loss_sum, correct)


def eval_statistics(model: nn.Module) -> str:
    """What evaluation normalizes with (``norms.EVAL_STATS``): the model's ``eval_stats``, where an
    ``eval_batch_size`` alone means ``batch`` (its spelling before ``eval_stats``)."""
    stats = getattr(model, "eval_stats", "moving")
    return "batch" if stats == "moving" and getattr(model, "eval_batch_size", None) is not None else stats


def with_population_statistics(model: nn.Module, state: TrainState, train_images: jax.Array,
                               batch_size: int) -> TrainState:
    """``state`` with its moving statistics replaced by population statistics ("precise BN", Wu &
    Johnson 2021): the model's ``population_batches`` first training batches of ``batch_size``, in
    the dataset's order (as evaluation reads data), each applied in training mode with the current
    weights (ghost groups and all, as the model trains), their statistics aggregated per layer by
    ``norms.population_statistics``. The training state is not changed: only evaluation uses them."""
    batches = model.population_batches
    images = train_images[:batches * batch_size].reshape(batches, batch_size, *train_images.shape[1:])
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def moments(batch):
        return model.apply(variables, normalize(batch), train=True, mutable=[MOMENTS])[1][MOMENTS]

    sown = jax.lax.map(moments, images)
    return state.replace(batch_stats=population_statistics(state.batch_stats, sown))


def evaluate(model: nn.Module, state: TrainState, images: jax.Array, labels: jax.Array,
             train_images: jax.Array | None = None, batch_size: int | None = None) -> dict:
    """Mean loss and accuracy, with the statistics ``eval_statistics`` names. ``moving`` (the
    default): the moving statistics (``train=False``), all images at once, so that the result does
    not depend on batching. ``batch``: in batches of the model's ``eval_batch_size`` (or the
    training ``batch_size``) with each batch's own statistics (``train=True``, its batch_stats left
    unchanged), the last, partial batch as one more. ``population``: as ``moving``, with population
    statistics of the training images recomputed first (``with_population_statistics``)."""
    mode = eval_statistics(model)
    if mode == "population":
        state = with_population_statistics(model, state, train_images, batch_size)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    size = (getattr(model, "eval_batch_size", None) or batch_size) if mode == "batch" else None
    if size is None:
        losses, correct = _loss_and_correct(model.apply(variables, normalize(images), train=False), labels)
        return {"loss": jnp.mean(losses), "accuracy": correct / labels.shape[0]}

    def batch_sums(images, labels):
        losses, correct = _loss_and_correct(model.apply(variables, normalize(images), train=True), labels)
        return jnp.sum(losses), correct

    n = labels.shape[0]
    full = n // size * size
    loss, correct = jax.lax.map(lambda b: batch_sums(*b), (images[:full].reshape(-1, size, *images.shape[1:]),
                                                           labels[:full].reshape(-1, size)))
    loss, correct = jnp.sum(loss), jnp.sum(correct)
    if full < n:
        tail_loss, tail_correct = batch_sums(images[full:], labels[full:])
        loss, correct = loss + tail_loss, correct + tail_correct
    return {"loss": loss / n, "accuracy": correct / n}


def train_epoch(model, tx, batch_size: int, state: TrainState, key: jax.Array,
                images: jax.Array, labels: jax.Array, unroll: int = 1, eval_every: int | None = None,
                val: tuple[jax.Array, jax.Array] | None = None, parallel: DataParallel = SINGLE_DEVICE,
                batch_order: str = "iid") -> tuple[TrainState, dict]:
    """One pass over a reshuffled training set: full batches under one ``lax.scan``, then the last,
    partial batch (if any) as its own step. No padding, so no padded row reaches BN's statistics, and
    both shapes are compiled once into the same program.

    ``first_nonfinite``: the update (counted from the start of training) whose batch loss was first
    NaN or infinite, or -1. With ``eval_every``, validation (``val``) is also evaluated after every
    ``eval_every``-th update of the epoch, inside the program: the scan runs in chunks of that many
    updates, each followed by an evaluation (``evals``: their losses and accuracies).

    Data-parallel, every device draws the same shuffle (the key is the same) and trains on its
    consecutive part of each global batch; evaluation is not split. ``batch_order``: how the
    shuffle forms batches (``epoch_order``)."""
    n, image_shape = labels.shape[0], images.shape[1:]
    train_images = images
    images = images.reshape(n, -1)  # rows of pixels: a simpler, faster gather per batch
    order = epoch_order(key, labels, batch_size, batch_order, model.num_classes)
    full_batches = n // batch_size

    def body(carry, batch):
        state, loss_sum, correct, first_nonfinite = carry
        batch = _shard(batch, parallel)
        batch_images = images[batch].reshape(batch.shape[0], *image_shape)
        step = state.step
        state, (batch_loss, batch_correct) = train_step(model, tx, state, batch_images, labels[batch], parallel)
        first_nonfinite = jnp.where((first_nonfinite < 0) & ~jnp.isfinite(batch_loss), step + 1, first_nonfinite)
        return (state, loss_sum + batch_loss, correct + batch_correct, first_nonfinite), None

    # Sums in the default types: 32-bit, or 64-bit in the tests' float64 references.
    carry = (state, jnp.zeros((), jnp.result_type(float)), jnp.zeros((), jnp.result_type(int)),
             jnp.full((), -1, jnp.int32))
    batches = order[:full_batches * batch_size].reshape(full_batches, batch_size)
    evals = None
    chunks = full_batches // eval_every if eval_every else 0
    if chunks:

        def chunk(carry, chunk_batches):
            carry, _ = jax.lax.scan(body, carry, chunk_batches, unroll=unroll)
            return carry, evaluate(model, carry[0], *val, train_images, batch_size)

        carry, evals = jax.lax.scan(chunk, carry, batches[:chunks * eval_every].reshape(chunks, eval_every, -1))
        batches = batches[chunks * eval_every:]
    carry, _ = jax.lax.scan(body, carry, batches, unroll=unroll)
    if n % batch_size:
        carry, _ = body(carry, order[full_batches * batch_size:])
    state, loss_sum, correct, first_nonfinite = carry
    # Keras reports the epoch's running means, weighted by batch size.
    metrics = {"train_loss": loss_sum / n, "train_accuracy": correct / n, "first_nonfinite": first_nonfinite}
    if evals is not None:
        metrics["evals"] = evals
    return state, metrics


def epoch_order(key: jax.Array, labels: jax.Array, batch_size: int, batch_order: str = "iid",
                num_classes: int = 10) -> jax.Array:
    """The order in which an epoch visits the training examples: consecutive runs of
    ``batch_size`` are its batches (the last, partial one last). A pure function of the key (the
    seed and epoch) and the labels, computed on the device.

    ``iid``: a uniformly random permutation. ``classes:K``: K classes per batch, B/K examples of
    each, formed so: (1) each class's examples in random order, the classes in random order, one
    after another; (2) each class cut into chunks of B/K consecutive examples, its last chunk
    partial unless its size is a multiple of B/K; (3) the M full chunks, in that order, dealt into
    F = M // K batches column by column: chunk j goes to batch j mod F, place j // F (so a batch's K
    chunks lie F chunks apart in the order, and come from K different classes wherever no class has
    more than F full chunks, that is holds at most 1/K of the examples); (4) what is left, each
    class's partial chunk and the last M mod K full chunks, is shuffled together into the remaining
    full batches, which mix classes, and the epoch's last, partial batch; (5) the full batches, the
    K-class and the mixed, in random order, the partial one last, as with ``iid``. Inside a
    K-class batch its classes come one after another (B/K examples each)."""
    n = labels.shape[0]
    k = classes_per_batch(batch_order)
    if k is None:
        return jax.random.permutation(key, n)
    chunk = batch_size // k
    full_batches = n // batch_size
    class_key, within_key, batch_key, rest_key = jax.random.split(key, 4)
    # (1) classes in random order, each class's examples in random order.
    place = jax.random.permutation(class_key, num_classes)  # place[c]: class c's place in the order
    by_class = jnp.argsort(place[labels] * n + jax.random.permutation(within_key, n))
    counts = jnp.bincount(labels, length=num_classes)
    in_order = jnp.argsort(place)  # the classes, in order
    starts = (jnp.cumsum(counts[in_order]) - counts[in_order])[place]
    full_chunks = counts // chunk
    chunk_starts = (jnp.cumsum(full_chunks[in_order]) - full_chunks[in_order])[place]
    # (2, 3) each position of that order: its chunk, and the batch and place it is dealt to.
    c = labels[by_class]
    i = jnp.arange(n) - starts[c]
    j = chunk_starts[c] + i // chunk
    dealt_batches = jnp.sum(full_chunks) // k
    dealt = (i // chunk < full_chunks[c]) & (j < dealt_batches * k)
    safe = jnp.maximum(dealt_batches, 1)
    batch = j % safe
    within = (j // safe) * chunk + i % chunk
    # (4) the rest, shuffled: its q-th example fills the batches after the dealt ones.
    q = jnp.argsort(jnp.argsort(jnp.where(dealt, n, 0) + jax.random.permutation(rest_key, n)))
    batch = jnp.where(dealt, batch, dealt_batches + q // batch_size)
    within = jnp.where(dealt, within, q % batch_size)
    # (5) the full batches in random order; the partial batch (index full_batches) last.
    rank = jnp.concatenate([jax.random.permutation(batch_key, full_batches), jnp.array([full_batches])])
    return by_class[jnp.argsort(rank[batch] * batch_size + within)]


def _shard(batch: jax.Array, parallel: DataParallel) -> jax.Array:
    """This device's consecutive part of a global batch (of example indices)."""
    if parallel.axis is None:
        return batch
    size = batch.shape[0] // parallel.devices
    return jax.lax.dynamic_slice_in_dim(batch, jax.lax.axis_index(parallel.axis) * size, size)


def epoch(model, batch_size: int, state: TrainState, key: jax.Array, hyperparams: Hyperparams,
          train_images, train_labels, val_images, val_labels, unroll: int = 1,
          eval_every: int | None = None, parallel: DataParallel = SINGLE_DEVICE,
          batch_order: str = "iid", optimizer: Optimizer = Optimizer()) -> tuple[TrainState, dict]:
    """An epoch as Keras' ``fit`` runs it: the updates, then validation; one run's ``hyperparams``."""
    model, tx = hyperparams.apply(model, optimizer)
    state, metrics = train_epoch(model, tx, batch_size, state, key, train_images, train_labels, unroll,
                                 eval_every, (val_images, val_labels), parallel, batch_order)
    val = evaluate(model, state, val_images, val_labels, train_images, batch_size)
    return state, {**metrics, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}


def over_seeds(fn: Callable, num_seeds: int, in_axes, sequential: bool = False) -> Callable:
    """``fn`` mapped over a leading seed axis: batched with ``jax.vmap``, or with ``sequential``
    one seed after another (``lax.map``), each seed running the program a single model would.
    One seed runs unbatched, so that it compiles to the same program as a single model would (vmap
    over a size-1 axis still batches every matmul)."""
    if num_seeds == 1:
        def single(*args):
            args = [jax.tree.map(lambda x: x[0], a) if axis == 0 else a for a, axis in zip(args, in_axes)]
            return jax.tree.map(lambda x: x[None], fn(*args))

        return single
    if not sequential:
        return jax.vmap(fn, in_axes=in_axes)

    def one_after_another(*args):
        def one_seed(mapped):
            slices = iter(mapped)
            return fn(*[next(slices) if axis == 0 else a for a, axis in zip(args, in_axes)])

        return jax.lax.map(one_seed, [a for a, axis in zip(args, in_axes) if axis == 0])

    return one_after_another


@flax.struct.dataclass
class DeviceData:
    """The three splits, placed on the device once as uint8 images and int32 labels."""

    train_images: jax.Array
    train_labels: jax.Array
    val_images: jax.Array
    val_labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array

    @classmethod
    def from_dataset(cls, ds: Dataset, device=None) -> "DeviceData":
        put = functools.partial(jax.device_put, device=device)
        return cls(**{f.name: put(np.asarray(getattr(ds, f.name))) for f in dataclasses.fields(cls)})


def seed_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Per seed: a key for initialisation and a root key from which each epoch's shuffle is folded."""
    if not all(-2**31 <= s < 2**31 for s in seeds):
        raise BnbenchError(f"seeds must be 32-bit integers, got {min(seeds)} to {max(seeds)}: choose --seed so "
                           f"that all seeds lie between {-2**31} and {2**31 - 1}")
    keys = _split_seeds(jnp.asarray(seeds, dtype=jnp.int32))
    return keys[:, 0], keys[:, 1]


# Key arithmetic is integer-exact, so compiling it changes no bit; run eagerly, each of its small
# operations compiled on its own and cost most of a second per variant before training began.
_split_seeds = jax.jit(jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s))))


# Training accuracy as evaluation measures it (moving statistics, the model in inference mode), on
# a fixed subset: the first TRAIN_EVAL_EXAMPLES examples of the training split, in the dataset's
# order, after every epoch and outside its timing. The running mean of training-mode accuracies
# over the epoch (``train_accuracy``) mixes weights of the whole epoch and batch statistics.
TRAIN_EVAL_EXAMPLES = 10_000


class Trainer:
    """Compiles one variant's programs for a number of seeds trained together, and runs them.

    The seeds are split over as many devices as divide them evenly (``devices.seed_mesh``); in a job
    of several processes over every device, the runs padded to fill them (``devices.trained_runs``),
    the padding discarded before anything is returned. Each
    device trains its share with ``jax.vmap``, except where the devices are parts of one CPU
    (``devices.seeds_one_after_another``): there each device trains its seeds one after another.
    With ``parallel`` over N devices, each share of seeds is trained data-parallel on N devices: a
    mesh of seeds x data.
    """

    def __init__(self, model: nn.Module, protocol: Protocol, data: DeviceData, num_seeds: int,
                 unroll: int = 1, devices=None, eval_every: int | None = None,
                 parallel: DataParallel = SINGLE_DEVICE):
        if num_seeds < 1:
            raise BnbenchError("at least one seed is needed")
        parallel.check_batches(protocol.batch_size, int(data.train_labels.shape[0]))
        check_batch_order(protocol.batch_order, protocol.batch_size, getattr(model, "num_classes", None))
        self.model, self.protocol, self.num_seeds, self.parallel = model, protocol, num_seeds, parallel
        self.unroll, self.eval_every = unroll, eval_every
        self.mesh = device_lib.seed_mesh(num_seeds, devices, parallel.devices)
        self.seed_devices = device_lib.seed_devices(self.mesh)
        self.trained_runs = device_lib.trained_runs(num_seeds, self.mesh)  # num_seeds and the padding
        self.mesh_devices = self.mesh.size if self.mesh is not None else 1
        self.sequential = device_lib.seeds_one_after_another(self.mesh)
        self.data = device_lib.replicate(data, self.mesh)
        subset = min(TRAIN_EVAL_EXAMPLES, int(data.train_labels.shape[0]))
        self.train_subset = device_lib.replicate((data.train_images[:subset], data.train_labels[:subset]), self.mesh)
        self.empty_images = device_lib.replicate(jnp.zeros((0,), jnp.uint8), self.mesh)
        share = self.trained_runs // self.seed_devices

        def seeded(fn, in_axes):
            return device_lib.over_mesh(over_seeds(fn, share, in_axes, self.sequential), self.mesh, in_axes)

        tx = protocol.transform()
        image_shape = tuple(data.train_images.shape[1:])
        if self.mesh is None and self.trained_runs == 1:  # the program every one-seed run shares
            self._init = lambda keys: jax.tree.map(lambda x: x[None],
                                                   initializer(model, image_shape, protocol.kind)(keys[0]))
        else:
            self._init = jax.jit(seeded(functools.partial(create_train_state, model, tx, image_shape=image_shape),
                                        (0,)))
        self.epoch_program = jax.jit(
            seeded(functools.partial(epoch, model, protocol.batch_size, unroll=unroll, eval_every=eval_every,
                                     parallel=parallel, batch_order=protocol.batch_order,
                                     optimizer=protocol.kind),
                   (0, 0, 0, None, None, None, None)),
            donate_argnums=0)
        # The training images reach evaluation only where it recomputes population statistics.
        population = eval_statistics(model) == "population"
        self._evaluate_program = jax.jit(seeded(
            lambda state, images, labels, train_images: evaluate(
                model, state, images, labels, train_images if population else None, protocol.batch_size),
            (0, None, None, None)))
        self._epoch = self._evaluate = self._evaluate_train = None  # compiled on first use, then reused
        self.compile_time_s = 0.0

    def init(self, init_keys: jax.Array) -> TrainState:
        return self._init(self.per_run(init_keys))

    def per_run(self, tree):
        """``tree`` (one entry per run along its leading axis) split over the mesh as the runs are."""
        return device_lib.place(tree, self.mesh, device_lib.PartitionSpec(device_lib.SEED_AXIS))

    def hyperparams(self, learning_rates: Sequence[float] | None = None,
                    bn_momenta: Sequence[float] | None = None, momenta: Sequence[float] | None = None,
                    weight_decays: Sequence[float] | None = None) -> Hyperparams:
        """Each run's hyperparameters, placed as the runs are; by default the protocol's learning
        rate, momentum and weight decay and the model's BN momentum for every run."""
        n, p = self.num_seeds, self.protocol
        default_momentum = getattr(self.model, "bn_momentum", 0.99)
        if weight_decays is not None and any(weight_decays) and not p.kind.decays:
            raise BnbenchError("weight decays given to a trainer whose protocol has none: set the protocol's "
                               "weight_decay to the largest of them")
        hyper = Hyperparams.of(learning_rates if learning_rates is not None else [p.learning_rate] * n,
                               bn_momenta if bn_momenta is not None else [default_momentum] * n,
                               momenta if momenta is not None else [p.momentum] * n,
                               weight_decays if weight_decays is not None else [p.weight_decay] * n)
        if any(getattr(hyper, f.name).shape != (n,) for f in dataclasses.fields(hyper)):
            raise BnbenchError(f"the trainer was built for {n} runs: give one value of each hyperparameter per run")
        return self.per_run(self.padded(hyper))

    def padded(self, tree):
        """``tree`` (one entry per run) with the padding runs appended: copies of the last run."""
        extra = self.trained_runs - self.num_seeds
        if not extra:
            return tree
        def pad(x):
            x = np.asarray(x)
            return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])

        return jax.tree.map(pad, tree)

    def unpadded(self, tree):
        """``tree`` (fetched, one entry per trained run) without the padding runs."""
        if self.trained_runs == self.num_seeds:
            return tree
        return jax.tree.map(lambda x: x[:self.num_seeds], tree)

    def start(self, seeds: Sequence[int], hyperparams: Hyperparams | None = None
              ) -> tuple[TrainState, jax.Array, Hyperparams]:
        """Initial state for ``seeds`` and their shuffle roots, with the programs compiled."""
        hyperparams = hyperparams if hyperparams is not None else self.hyperparams()
        init_keys, shuffle_roots = self.padded(seed_keys(seeds))
        state, shuffle_roots = self.init(init_keys), self.per_run(shuffle_roots)
        self.compile(state, epoch_keys(shuffle_roots, 0), hyperparams)
        return state, shuffle_roots, hyperparams

    def compile(self, state: TrainState, epoch_keys: jax.Array, hyperparams: Hyperparams) -> None:
        """Compiles the epoch and evaluation programs ahead of time, once: their time is
        compile_time_s, and later calls (another fit, another start) reuse them."""
        if self._epoch is not None:
            return
        start = time.perf_counter()
        self._epoch = self.epoch_program.lower(state, epoch_keys, hyperparams, *self._train_val()).compile()
        self._evaluate = self._evaluate_program.lower(
            state, self.data.test_images, self.data.test_labels, self._population_images()).compile()
        self._evaluate_train = self._evaluate_program.lower(
            state, *self.train_subset, self._population_images()).compile()
        self.compile_time_s = time.perf_counter() - start

    def epoch_args(self) -> tuple:
        """Abstract arguments of ``epoch_program`` (shapes and dtypes), for tracing it."""
        keys = jax.ShapeDtypeStruct((self.trained_runs, 2), jnp.uint32)
        state = jax.eval_shape(self._init, keys)
        return (state, keys, self.hyperparams(), *self._train_val())

    def _train_val(self):
        d = self.data
        return d.train_images, d.train_labels, d.val_images, d.val_labels

    def run_epoch(self, state: TrainState, epoch_keys: jax.Array, hyperparams: Hyperparams | None = None
                  ) -> tuple[TrainState, dict, float]:
        """One compiled epoch for all runs; returns the new state, the metrics and its wall time."""
        hyperparams = hyperparams if hyperparams is not None else self.hyperparams()
        self.compile(state, epoch_keys, hyperparams)  # a no-op once compiled; never inside the timed epoch
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(self._epoch(state, epoch_keys, hyperparams, *self._train_val()))
        return state, metrics, time.perf_counter() - start

    def _population_images(self):
        """The training images where evaluation recomputes population statistics from them, else
        an empty array: the compiled evaluation takes one either way."""
        if eval_statistics(self.model) == "population":
            return self.data.train_images
        return self.empty_images

    def test(self, state: TrainState) -> dict:
        return self._evaluate(state, self.data.test_images, self.data.test_labels, self._population_images())

    def evaluate_train(self, state: TrainState) -> dict:
        """Loss and accuracy on the fixed training subset (``TRAIN_EVAL_EXAMPLES``), as evaluated."""
        return self._evaluate_train(state, *self.train_subset, self._population_images())


@jax.jit
def epoch_keys(shuffle_roots: jax.Array, epoch_index: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, epoch_index))(shuffle_roots)


def fit(trainer: Trainer, seeds: Sequence[int],
        on_epoch: Callable[[int, dict, float], None] | None = None, hyperparams: Hyperparams | None = None) -> dict:
    """Trains ``trainer``'s model once per run, all runs together; run i has seed ``seeds[i]``
    (several runs may share a seed: a sweep gives each configuration the same seeds) and, if given,
    its own ``hyperparams``. Returns per-epoch metrics (arrays over runs), the epoch times shared by
    the runs, test metrics, the time this fit spent compiling (0 for a trainer whose programs an
    earlier fit compiled) and state."""
    if len(seeds) != trainer.num_seeds:
        raise BnbenchError(f"the trainer was built for {trainer.num_seeds} seeds, got {len(seeds)}")
    compiles_now = trainer._epoch is None  # a reused trainer's programs are compiled already
    state, shuffle_roots, hyperparams = trainer.start(seeds, hyperparams)
    history, epoch_times = [], []
    for i in range(trainer.protocol.epochs):
        state, metrics, seconds = trainer.run_epoch(state, epoch_keys(shuffle_roots, i), hyperparams)
        as_evaluated = trainer.evaluate_train(state)  # after the timed epoch: not in its time
        metrics = trainer.unpadded(device_lib.fetch({**metrics, "train_eval_loss": as_evaluated["loss"],
                                                     "train_eval_accuracy": as_evaluated["accuracy"]}))
        history.append(metrics)
        epoch_times.append(seconds)
        if on_epoch is not None:
            on_epoch(i, metrics, seconds)
    test = trainer.unpadded(device_lib.fetch(trainer.test(state)))
    return {"history": history, "epoch_times": epoch_times, "test": test,
            "compile_time_s": trainer.compile_time_s if compiles_now else 0.0, "state": state}


def train(model: nn.Module, protocol: Protocol, data: DeviceData, seeds: Sequence[int],
          on_epoch: Callable[[int, dict, float], None] | None = None, unroll: int = 1) -> dict:
    """``fit`` with a new Trainer: the whole protocol for ``model`` and ``seeds``."""
    return fit(Trainer(model, protocol, data, len(seeds), unroll=unroll), seeds, on_epoch)
