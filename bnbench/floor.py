"""A program's matrix-multiply floor: the same matrix products, and nothing else, in one XLA scan.

``matmuls(fn, *args)`` reads every ``dot_general`` out of a function's jaxpr, with how many times
it runs (a dot inside a ``scan`` of length 1,718 runs 1,718 times). ``floor_program`` rebuilds just
those products, with the same shapes, dtypes and counts, as a scan per count. Its time is the
floor that the real program (which adds activations, BN, gathers, the optimizer update) is measured
against: a ratio near 1 means the matmuls dominate and little is left to win.

The products are chained: each waits for the one before it, in the order the program computes
them, and the last feeds the first of the next iteration, as in a training step, where every
layer's product needs the one before and the next update needs this one's weights. (Run
independently, the products of one step overlap on a multi-core CPU in a way a training step's
chain of dependent products cannot, and the floor came out about 20% lower than that chain
allows.) The link is one element of each product's output, added into the next product's left
operand: one scalar add per product. An optimization barrier keeps XLA from shrinking a product
to the one element the link reads.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnbench import devices


@dataclasses.dataclass(frozen=True)
class Matmul:
    lhs_shape: tuple[int, ...]
    rhs_shape: tuple[int, ...]
    dtype: Any
    dimension_numbers: Any
    out_shape: tuple[int, ...]

    @property
    def flops(self) -> int:
        """2 x (product of output dims) x (product of contracted dims)."""
        (lhs_contract, _), _ = self.dimension_numbers
        contracted = int(np.prod([self.lhs_shape[d] for d in lhs_contract]))
        return 2 * int(np.prod(self.out_shape)) * contracted


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def _walk(jaxpr, repeat: int, found: collections.Counter) -> None:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            found[Matmul(tuple(lhs.shape), tuple(rhs.shape), np.dtype(lhs.dtype),
                         eqn.params["dimension_numbers"], tuple(eqn.outvars[0].aval.shape))] += repeat
            continue
        inner = repeat * eqn.params["length"] if eqn.primitive.name == "scan" else repeat
        for sub in _subjaxprs(eqn):
            _walk(sub, inner, found)


def matmuls(fn: Callable, *args) -> dict[Matmul, int]:
    """Every matrix product ``fn(*args)`` computes, and how many times."""
    found: collections.Counter = collections.Counter()
    _walk(jax.make_jaxpr(fn)(*args).jaxpr, 1, found)
    return dict(found)


def compiled_flops(compiled) -> float | None:
    """FLOPs of a compiled program by XLA's cost analysis (None where the backend gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jaxlib returns one dict per program
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None else None


def total_flops(products: dict[Matmul, int]) -> int:
    return sum(m.flops * count for m, count in products.items())


def floor_program(products: dict[Matmul, int], unroll: int = 1, mesh=None):
    """A jitted function of the operands that runs each product ``count`` times, and the operands.
    With a ``mesh`` (seeds spread over devices), every device runs the products at once, as every
    device trains its share of the seeds at once."""
    by_count: dict[int, list[Matmul]] = collections.defaultdict(list)
    for m, count in products.items():
        by_count[count].append(m)
    groups = sorted(by_count.items())

    def run_group(ms, operands, count):
        def body(carry, _):
            operands, link = carry
            chained = []
            for m, (lhs, rhs) in zip(ms, operands):
                corner = (0,) * lhs.ndim
                linked = lax.slice(lhs, corner, (1,) * lhs.ndim) + link.astype(lhs.dtype)
                lhs = lax.dynamic_update_slice(lhs, linked, corner)
                out = lax.optimization_barrier(lax.dot_general(lhs, rhs, m.dimension_numbers))
                link = out.reshape(-1)[0].astype(jnp.float32) * 1e-30
                chained.append((lhs, rhs))
            return (chained, link), None

        carry = (operands, jnp.zeros((), jnp.float32))
        if count == 1:
            return body(carry, None)[0]
        return lax.scan(body, carry, None, length=count, unroll=unroll)[0]

    def floor(all_operands):
        return [run_group(ms, ops, count) for (count, ms), ops in zip(groups, all_operands)]

    # Operands drawn with NumPy: jax.random run eagerly compiles a sampler per shape, which cost
    # seconds per variant before the floor was timed at all.
    rng = np.random.default_rng(0)

    def operand(shape, dtype):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype=dtype)

    operands = [[(operand(m.lhs_shape, m.dtype), operand(m.rhs_shape, m.dtype)) for m in ms] for _, ms in groups]
    if mesh is not None:
        floor = devices.over_mesh(floor, mesh, (None,), out_axis=None)
        operands = devices.replicate(operands, mesh)
    return jax.jit(floor), operands


class FloorClock:
    """The floor of ``products``, compiled once and timed once per ``tick``: interleaved with the
    epochs it is the yardstick for, each gets a floor measured moments apart under the same load."""

    def __init__(self, products: dict[Matmul, int], unroll: int = 1, mesh=None):
        self.products = products
        program, self._operands = floor_program(products, unroll=unroll, mesh=mesh)
        start = time.perf_counter()
        self._program = program.lower(self._operands).compile()
        self.compile_time_s = time.perf_counter() - start
        jax.block_until_ready(self._program(self._operands))  # the first run pays for page faults
        self.times: list[float] = []

    def tick(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self._program(self._operands))
        self.times.append(time.perf_counter() - start)
        return self.times[-1]


def time_floor(products: dict[Matmul, int], repeats: int = 5, unroll: int = 1) -> dict:
    """Compiles the floor, runs it ``repeats`` times, and returns the median and all times."""
    clock = FloorClock(products, unroll=unroll)
    for _ in range(repeats):
        clock.tick()
    return {"median_s": float(np.median(clock.times)), "times_s": clock.times,
            "compile_time_s": clock.compile_time_s, "flops": total_flops(products)}
