"""A program's matrix-multiply floor: the same products, and nothing else, in one XLA scan.

``matmuls(fn, *args)`` reads every product out of a function's jaxpr (each ``dot_general`` and
each convolution, ``conv_general_dilated``), with how many times it runs (a product inside a
``scan`` of length 1,718 runs 1,718 times). ``floor_program`` rebuilds just those products, with
the same shapes, dtypes, parameters and counts, as a scan per count. Its time is the floor that
the real program (which adds activations, normalization, pooling, gathers, the optimizer update)
is measured against: a ratio near 1 means the products dominate and little is left to win. A
program with an operation of comparable weight that the floor does not rebuild (an FFT, a
factorization) has no floor: ``matmuls`` raises ``FloorUnavailable`` and reports say why, rather
than print a ratio to a floor that leaves out part of the work.

The products are chained: each waits for the one before it, in the order the program computes
them, and the last feeds the first of the next iteration, as in a training step, where every
layer's product needs the one before and the next update needs this one's weights. (Run
independently, the products of one step overlap on a multi-core CPU in a way a training step's
chain of dependent products cannot, and the floor came out lower than that chain allows.) The
link is one element of each product's output, added into the next product's left operand: one
scalar add per product. An optimization barrier keeps XLA from shrinking a product
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

from bnbench.parallel import devices


@dataclasses.dataclass(frozen=True)
class Product:
    """One matrix product (``dot_general``) or convolution (``conv_general_dilated``, whose other
    parameters are ``params``, sorted (name, value) pairs) of a program."""

    lhs_shape: tuple[int, ...]
    rhs_shape: tuple[int, ...]
    dtype: Any
    dimension_numbers: Any
    out_shape: tuple[int, ...]
    primitive: str = "dot_general"
    params: tuple = ()

    @property
    def flops(self) -> int:
        """2 x (product of output dims) x (what each output element sums over): the contracted
        dims of a matmul; a convolution's input features per group times its window."""
        if self.primitive == "conv_general_dilated":
            rhs_spec = self.dimension_numbers.rhs_spec  # (out features, in features, *window)
            per_output = int(np.prod([self.rhs_shape[d] for d in rhs_spec[1:]]))
            return 2 * int(np.prod(self.out_shape)) * per_output
        (lhs_contract, _), _ = self.dimension_numbers
        contracted = int(np.prod([self.lhs_shape[d] for d in lhs_contract]))
        return 2 * int(np.prod(self.out_shape)) * contracted

    def apply(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        if self.primitive == "conv_general_dilated":
            return lax.conv_general_dilated_p.bind(lhs, rhs, dimension_numbers=self.dimension_numbers,
                                                   **dict(self.params))
        return lax.dot_general(lhs, rhs, self.dimension_numbers)


PRODUCTS = ("dot_general", "conv_general_dilated")
# Operations whose cost can rival the products' but which the floor does not rebuild: a program
# that has one gets no floor rather than a ratio to a floor that leaves it out.
NOT_TIMED = ("fft", "cholesky", "triangular_solve", "lu", "qr", "eigh", "eig", "svd", "ragged_dot",
             "ragged_dot_general")


class FloorUnavailable(Exception):
    """The program computes something the floor cannot time; the message says what."""


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def _walk(jaxpr, repeat: int, found: collections.Counter) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in NOT_TIMED:
            raise FloorUnavailable(f"the program computes {name}, which the matmul floor does not rebuild")
        if name in PRODUCTS:
            lhs, rhs = (v.aval for v in eqn.invars)
            params = tuple(sorted((k, v) for k, v in eqn.params.items() if k != "dimension_numbers"))
            found[Product(tuple(lhs.shape), tuple(rhs.shape), np.dtype(lhs.dtype), eqn.params["dimension_numbers"],
                          tuple(eqn.outvars[0].aval.shape), name,
                          params if name == "conv_general_dilated" else ())] += repeat
            continue
        inner = repeat * eqn.params["length"] if name == "scan" else repeat
        for sub in _subjaxprs(eqn):
            _walk(sub, inner, found)


def matmuls(fn: Callable, *args) -> dict[Product, int]:
    """Every product ``fn(*args)`` computes, and how many times; FloorUnavailable if it computes
    an operation the floor does not rebuild."""
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


def total_flops(products: dict[Product, int]) -> int:
    return sum(m.flops * count for m, count in products.items())


def floor_program(products: dict[Product, int], unroll: int = 1, mesh=None):
    """A jitted function of the operands that runs each product ``count`` times, and the operands.
    With a ``mesh`` (seeds spread over devices), every device runs the products at once, as every
    device trains its share of the seeds at once."""
    by_count: dict[int, list[Product]] = collections.defaultdict(list)
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
                out = lax.optimization_barrier(m.apply(lhs, rhs))
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

    def __init__(self, products: dict[Product, int], unroll: int = 1, mesh=None):
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


def time_floor(products: dict[Product, int], repeats: int = 5, unroll: int = 1) -> dict:
    """Compiles the floor, runs it ``repeats`` times, and returns the median and all times."""
    clock = FloorClock(products, unroll=unroll)
    for _ in range(repeats):
        clock.tick()
    return {"median_s": float(np.median(clock.times)), "times_s": clock.times,
            "compile_time_s": clock.compile_time_s, "flops": total_flops(products)}
