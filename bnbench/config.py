"""Facts every layer shares, free of JAX and Flax: a command that only reads reports (compare,
report) imports them without starting either."""

from __future__ import annotations

# The normalizations that keep moving averages of batch statistics (so their bn_momentum matters,
# and data-parallel layouts decide over which examples they are taken).
MOVING_STATISTICS = frozenset({"batch_norm", "batch_renorm"})

# What `compare --fail-on-regression` can hold later reports to (`--gate`).
GATES = ("auto", "time", "accuracy", "all")

# Over which examples data-parallel BatchNorm takes its statistics: the whole batch (sync, what one
# device computes), or each device's shard (local); the first is the default.
BATCH_STATS = ("sync", "local")
