"""Facts every layer shares, free of JAX and Flax: a command that only reads reports (compare,
report) imports them without starting either."""

from __future__ import annotations

import re

# The normalizations that keep moving averages of batch statistics (so their bn_momentum matters,
# and data-parallel layouts decide over which examples they are taken).
MOVING_STATISTICS = frozenset({"batch_norm", "batch_renorm"})

# What `compare --fail-on-regression` can hold later reports to (`--gate`).
GATES = ("auto", "time", "accuracy", "all")

# Over which examples data-parallel BatchNorm takes its statistics: the whole batch (sync, what one
# device computes), or each device's shard (local); the first is the default.
BATCH_STATS = ("sync", "local")

# The optimizers of --optimizer (optax's): plain SGD (the notebook's, Keras' SGD without momentum),
# SGD with heavy-ball or Nesterov momentum, Adam and AdamW. Where a momentum applies (SGD momentum,
# Adam's first-moment decay b1) it defaults to DEFAULT_MOMENTUM.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
DEFAULT_MOMENTUM = 0.9

# The number types of --precision: float32 throughout (the notebook's); bfloat16 products and
# activations with float32 parameters, optimizer state and normalization statistics; or that with
# the statistics computed in bfloat16 too (docs/settings.md says which operation runs in which).
PRECISIONS = ("float32", "bfloat16", "bfloat16-statistics")

# How bnbench's side of a peer benchmark's round ran, as reports record it (``bnbench_round``): its
# step compiled as a loop over the round's batches. Reports before it timed lone steps.
COMPILED_LOOP = "compiled loop"


# A variant's text: a registered name, then after a colon the fields it changes, comma-separated
# (``conv_bn:channels=(8,16),groups=2``: commas inside brackets belong to a value).
FIELD_COMMA = re.compile(r",(?![^()\[\]]*[)\]])")


def variant_changes(text: str) -> tuple[str, dict[str, str]]:
    """A variant's text split into its registered name and the fields it changes, as written."""
    base, _, changes = text.partition(":")
    return base, {key: value for key, _, value in (item.partition("=") for item in FIELD_COMMA.split(changes) if item)}
