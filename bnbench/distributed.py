"""Several processes training one program together, on JAX's own runtime (``jax.distributed``).

Every process runs the same command, loads the data itself and contributes its devices to one
global mesh; the compiled epoch's collectives cross processes (on CPUs through gloo). Only
process 0 prints tables and writes reports. A process that loses a peer mid-run raises an error
in its next collective: ``stop_after`` turns it into one line and ends the process at once,
without waiting on a shutdown barrier its dead peer can never join.
"""

from __future__ import annotations

import os
import sys

from bnbench.errors import BnbenchError

DEFAULT_TIMEOUT_S = 60
joined = False  # whether this process has joined a job of several (``initialize``)


def _on_cluster() -> bool:
    """Whether the environment describes a job of several processes that JAX can join by itself:
    a SLURM job of more than one task, or JAX's own coordinator variable."""
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 or "JAX_COORDINATOR_ADDRESS" in os.environ


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Joins the other processes of the job, from the options or else from the cluster's
    environment (SLURM); returns whether this is one process of several. Must run before JAX
    starts its backends. ``timeout_s`` bounds both the wait for every process to join and how
    long a silent process is waited for before the job is stopped."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise BnbenchError(f"{', '.join(missing)} missing: --coordinator HOST:PORT, --num-processes P and "
                               "--process-id I go together (or give none of them under SLURM)")
        if not 0 <= process_id < num_processes:
            raise BnbenchError(f"--process-id {process_id}: must be from 0 to {num_processes - 1} "
                               f"for --num-processes {num_processes}")
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise BnbenchError(f"--coordinator {coordinator!r}: give HOST:PORT, as in 127.0.0.1:12345 "
                               "(process 0's address, the same for every process)")
    elif not _on_cluster():
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs' collectives across processes
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=timeout_s)
    except Exception as e:  # noqa: BLE001 - JAX raises its runtime's errors unwrapped
        where = coordinator or "the coordinator the cluster names"
        raise BnbenchError(f"could not join the other processes through {where} within {timeout_s} s "
                           f"({_first_line(e)}): start every process with the same --coordinator and "
                           "--num-processes, each with its own --process-id") from None
    global joined
    joined = True
    return True


def is_main_process() -> bool:
    """Whether this process speaks for the job: prints and writes (process 0, or the only one)."""
    import jax

    return jax.process_index() == 0


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` says another process of the job went away (a collective's connection
    closed, or the coordinator reporting a task unhealthy)."""
    text = str(error).lower()
    return any(s in text for s in ("gloo", "connection closed", "connection reset", "heartbeat", "unavailable"))


def stop_after(error: BaseException) -> None:
    """Ends this process of a distributed job now, with one line saying why: the shutdown barrier
    JAX runs at exit would wait for the peers, and a dead peer never comes."""
    import jax

    me = f"process {jax.process_index()} of {jax.process_count()}"
    if lost_peer(error):
        message = (f"{me}: another process of the job stopped or became unreachable ({_first_line(error)}); "
                   "stopping too. See that process's output for its error; rerun every process")
    else:
        message = f"{me}: {error}" if isinstance(error, BnbenchError) else f"{me}: {type(error).__name__}: {_first_line(error)}"
    print(f"bnbench: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(3 if lost_peer(error) else 2)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
