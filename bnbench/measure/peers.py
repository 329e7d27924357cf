"""bnbench's training step against the same models in other frameworks: PyTorch eager and Keras 3
on JAX (``pytest benchmarks/ --peers``; docs/performance.md).

The peers are optional extras (``pip install 'bnbench[peers]'``), imported only here and only when
a peer benchmark runs. Each builds the same model as bnbench's variant (the same layers, widths,
initializers, BatchNorm momentum and epsilon; FIDELITY.md) and trains it as its users would: a
plain eager loop for PyTorch, ``model.fit`` for Keras, batches of 32 uint8 images already in memory,
normalized to [0, 1] inside the step, plain SGD at 1e-3, softmax cross-entropy; training only.

A round is ``steps`` consecutive updates over the same batches for every framework; bnbench's round
is its train step compiled as a loop over them (``steptime.RoundProgram``, as its epochs run),
synchronised once. The two are timed in alternation, so that both see the same load, and the ratio
is the median over rounds of the peer's round over bnbench's round just before it (above 1: bnbench
is faster).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import time

import numpy as np

from bnbench.config import COMPILED_LOOP
from bnbench.errors import BnbenchError
from bnbench.parallel.devices import usable_cores
from bnbench.record import stats

INSTALL = "pip install 'bnbench[peers]'"
# The peers, by the name a report gives them: (the package, the least version timed).
PEERS = {"pytorch": ("torch", None), "keras": ("keras", (3, 15))}
# bnbench's variants each peer builds: (family, BatchNorm or not).
VARIANTS = {"seed_plain": ("mlp", False), "seed_bn": ("mlp", True),
            "conv_plain": ("conv", False), "conv_bn": ("conv", True)}
BATCH_SIZE, LEARNING_RATE = 32, 1e-3
BN_MOMENTUM, EPSILON = 0.99, 1e-3  # Keras' (PyTorch's momentum is the batch's share: 1 - 0.99)
LEAKY_SLOPE = 0.3
CONV_CHANNELS, HIDDEN = (8, 16), (300, 100)
HE_TRUNCATION = 0.87962566103423978  # the std of a unit normal truncated at 2 sigma (Keras' he_normal)


class PeerMissing(BnbenchError):
    """A peer that cannot run here; the message is the one line a skip shows."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here, in one line (what to install), or None; imports nothing."""
    package, least = PEERS[peer]
    if importlib.util.find_spec(package) is None:
        return f"{peer}: {package} is not installed; install the peers with {INSTALL}"
    if least is not None:
        found = importlib.metadata.version(package)
        if _version_tuple(found) < least:
            return (f"{peer}: {package} {found} is older than {'.'.join(map(str, least))}; install the peers with "
                    f"{INSTALL}")
    return None


def version(peer: str) -> str:
    return importlib.metadata.version(PEERS[peer][0])


def keras_on_jax():
    """Keras 3 on its JAX backend; PeerMissing where Keras was imported with another one."""
    os.environ.setdefault("KERAS_BACKEND", "jax")  # read once, when Keras is first imported
    import keras

    if keras.backend.backend() != "jax":
        raise PeerMissing(f"keras: imported with the {keras.backend.backend()} backend before the peer benchmark; "
                          "run it with KERAS_BACKEND=jax")
    return keras


# ---- PyTorch -------------------------------------------------------------------------------


def torch_model(name: str, image_shape: tuple[int, ...], num_classes: int = 10):
    """bnbench's variant ``name`` as a torch.nn.Sequential in PyTorch's layout (NCHW images)."""
    import torch
    from torch import nn

    family, bn = VARIANTS[name]
    layers: list = []
    if family == "mlp":
        width = math.prod(image_shape)
        layers.append(nn.Flatten())
        if bn:
            layers.append(nn.BatchNorm1d(width, eps=EPSILON, momentum=1 - BN_MOMENTUM))
        for units in HIDDEN:
            layers.append(nn.Linear(width, units))
            _init(layers[-1].weight, "glorot_uniform" if bn else "he_normal")
            layers.append(nn.ReLU() if bn else nn.LeakyReLU(LEAKY_SLOPE))
            if bn:
                layers.append(nn.BatchNorm1d(units, eps=EPSILON, momentum=1 - BN_MOMENTUM))
            width = units
    else:
        channels = image_shape[2] if len(image_shape) == 3 else 1
        height, width_ = image_shape[:2]
        for features in CONV_CHANNELS:
            layers.append(nn.Conv2d(channels, features, 3, padding=1, bias=not bn))
            _init(layers[-1].weight, "glorot_uniform")
            if bn:
                layers.append(nn.BatchNorm2d(features, eps=EPSILON, momentum=1 - BN_MOMENTUM))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels, height, width_ = features, height // 2, width_ // 2
        layers.append(nn.Flatten())
        width = channels * height * width_
    layers.append(nn.Linear(width, num_classes))
    _init(layers[-1].weight, "glorot_uniform")
    for layer in layers:
        if getattr(layer, "bias", None) is not None and isinstance(layer, (nn.Linear, nn.Conv2d)):
            torch.nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def _init(weight, kind: str) -> None:
    """Keras' initializers (PyTorch's fans of a (out, in, kh, kw) weight are Keras' of its kernel)."""
    import torch

    if kind == "glorot_uniform":
        torch.nn.init.xavier_uniform_(weight)
    else:
        std = math.sqrt(2 / weight[0].numel()) / HE_TRUNCATION  # fan_in: a row of the weight
        torch.nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def torch_images(images):
    """uint8 (n, h, w[, c]) to PyTorch's float32 (n, c, h, w) in [0, 1]: the step's first work."""
    x = images.float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


class TorchProgram:
    """PyTorch eager: ``steps`` updates of an idiomatic training loop per call, over the data in
    memory as tensors, with as many threads as the cores this process may use."""

    peer = "pytorch"

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, steps: int, num_classes: int = 10,
                 seed: int = 0):
        import torch

        torch.set_num_threads(usable_cores())
        torch.manual_seed(seed)
        self.torch = torch
        self.model = torch_model(name, tuple(images.shape[1:]), num_classes)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE)
        self.loss = torch.nn.CrossEntropyLoss()
        self.images, self.labels = round_data(images, labels, steps)
        self.images, self.labels = torch.from_numpy(self.images), torch.from_numpy(self.labels.astype(np.int64))
        self.steps = steps
        self.times: list[float] = []

    def __call__(self) -> None:
        start = time.perf_counter()
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss
        for i in range(self.steps):
            images = self.images[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            labels = self.labels[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(torch_images(images)), labels)
            loss.backward()
            optimizer.step()
        self.times.append(time.perf_counter() - start)


# ---- Keras 3 on JAX ------------------------------------------------------------------------


def keras_model(name: str, image_shape: tuple[int, ...], num_classes: int = 10):
    """bnbench's variant ``name`` as a compiled keras.Sequential taking uint8 images (n, h, w[, c]);
    its first layer scales them to [0, 1], its last is the notebook's softmax."""
    keras = keras_on_jax()
    L = keras.layers
    family, bn = VARIANTS[name]
    layers = [keras.Input(shape=image_shape), L.Rescaling(1 / 255.0)]
    if family == "mlp":
        layers.append(L.Flatten())
        if bn:
            layers.append(L.BatchNormalization(momentum=BN_MOMENTUM, epsilon=EPSILON))
        for units in HIDDEN:
            if bn:
                layers += [L.Dense(units, activation="relu"),
                           L.BatchNormalization(momentum=BN_MOMENTUM, epsilon=EPSILON)]
            else:
                layers += [L.Dense(units, kernel_initializer="he_normal"), L.LeakyReLU(LEAKY_SLOPE)]
    else:
        if len(image_shape) == 2:
            layers.append(L.Reshape((*image_shape, 1)))
        for features in CONV_CHANNELS:
            layers.append(L.Conv2D(features, 3, padding="same", use_bias=not bn))
            if bn:
                layers.append(L.BatchNormalization(momentum=BN_MOMENTUM, epsilon=EPSILON))
            layers += [L.ReLU(), L.MaxPooling2D(2)]
        layers.append(L.Flatten())
    layers.append(L.Dense(num_classes, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE), loss="sparse_categorical_crossentropy")
    return model


class KerasProgram:
    """Keras 3 on JAX: one ``model.fit`` epoch of ``steps`` batches of 32 per call, the data in
    memory as JAX arrays, no shuffling, verbose=0 (the idiomatic path; it compiles its step on the
    first call)."""

    peer = "keras"

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, steps: int, num_classes: int = 10,
                 seed: int = 0):
        import jax.numpy as jnp

        keras = keras_on_jax()
        keras.utils.set_random_seed(seed)
        self.model = keras_model(name, tuple(images.shape[1:]), num_classes)
        images, labels = round_data(images, labels, steps)
        self.images, self.labels = jnp.asarray(images), jnp.asarray(labels)
        self.steps = steps
        self.times: list[float] = []

    def __call__(self) -> None:
        start = time.perf_counter()
        self.model.fit(self.images, self.labels, batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0)
        self.times.append(time.perf_counter() - start)


PROGRAMS = {"pytorch": TorchProgram, "keras": KerasProgram}


def program(peer: str, name: str, images: np.ndarray, labels: np.ndarray, steps: int, num_classes: int = 10):
    """The peer's program for variant ``name``; PeerMissing (one line) where the peer cannot run."""
    reason = missing(peer)
    if reason is not None:
        raise PeerMissing(reason)
    return PROGRAMS[peer](name, images, labels, steps, num_classes)


def round_data(images: np.ndarray, labels: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` batches of the training data: its first examples, repeated where it has too few."""
    need = steps * BATCH_SIZE
    if len(images) < BATCH_SIZE:
        raise BnbenchError(f"the training split has {len(images)} examples, fewer than a batch of {BATCH_SIZE}")
    index = np.arange(need) % (len(images) // BATCH_SIZE * BATCH_SIZE)
    return np.ascontiguousarray(np.asarray(images)[index]), np.ascontiguousarray(np.asarray(labels)[index])


def comparison(peer: str, peer_version: str, variant: str, steps: int, peer_times, bnbench_times) -> dict:
    """What a peer benchmark records, from rounds of ``steps`` updates timed in alternation (bnbench's
    round first): per-step times of each, and ``ratio``, the median over rounds of the peer's
    round over bnbench's (above 1: bnbench is faster)."""
    if len(peer_times) != len(bnbench_times) or not peer_times:
        raise ValueError("time the peer and bnbench in alternation, as many rounds each")
    ratios = [p / b for p, b in zip(peer_times, bnbench_times)]
    return {"variant": variant, "peer": peer, "peer_version": peer_version, "steps": steps,
            "rounds": len(ratios), "batch_size": BATCH_SIZE,
            "peer_step_s": stats.spread([t / steps for t in peer_times]),
            "bnbench_step_s": stats.spread([t / steps for t in bnbench_times]),
            "ratio": float(np.median(ratios)), "ratios": ratios, "bnbench_round": COMPILED_LOOP}
