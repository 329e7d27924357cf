"""Several processes training one program together, on JAX's own runtime (``jax.distributed``).

Every process runs the same command, loads the data itself and contributes its devices to one
global mesh; the compiled epoch's collectives cross processes (on CPUs through gloo). Only
process 0 prints tables and writes reports.

Failures: before training, every process says through JAX's key-value store that it is ready,
with a fingerprint of its arguments and data, or why it stopped (``agree``); so a process that
fails to start, or one started with other arguments, stops every process with one line and a
clean shutdown, instead of leaving them in a collective that never completes. A process lost
mid-run makes the others fail in their next collective: ``stop_after`` turns that into one line
naming the lost process and ends the process at once, without waiting on a shutdown barrier its
dead peer can never join. A process that stops answering without dying, or the death of process 0
(which runs the coordination service), is JAX's coordination service's to detect: after
``--peer-timeout`` seconds (at once for process 0) JAX's client ends the others itself from C++,
which Python cannot catch; ``stderr_guard`` turns its fatal log and stack trace into bnbench's line.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading

from bnbench import options
from bnbench.errors import EXIT_PEER_LOST, BnbenchError

DEFAULT_TIMEOUT_S = options.PEER_TIMEOUT.default
# This process's place in a job: one per process, as jax.distributed's own state is.
joined = False  # whether this process has joined a job of several (``initialize``)
_agreed = False  # whether it has said it is ready (``agree``): from then on a failure is mid-run
_timeout_s = DEFAULT_TIMEOUT_S


class PeerFailed(BnbenchError):
    """Another process of the job stopped before training, or was started otherwise."""


def _on_cluster() -> bool:
    """Whether the environment describes a job of several processes that JAX can join by itself: a
    task of a SLURM job step of several tasks (srun sets SLURM_PROCID; a shell under salloc does
    not), or JAX's own coordinator variable."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or "1"
    return ("SLURM_PROCID" in os.environ and tasks.isdigit() and int(tasks) > 1) or \
        "JAX_COORDINATOR_ADDRESS" in os.environ


def cluster_processes() -> int:
    """The processes of the job the environment describes (SLURM's tasks), 1 outside one."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or "1"
    return int(tasks) if _on_cluster() and tasks.isdigit() else 1


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
                                   heartbeat_timeout_seconds=timeout_s, shutdown_timeout_seconds=timeout_s)
    except Exception as e:  # noqa: BLE001 - JAX raises its runtime's errors unwrapped
        where = coordinator or "the coordinator the cluster names"
        raise BnbenchError(f"could not join the other processes through {where} within {timeout_s} s "
                           f"({_first_line(e)}): start every process with the same --coordinator and "
                           "--num-processes, each with its own --process-id") from None
    guard_stderr(process_id if process_id is not None else jax.process_index(),
                 num_processes or jax.process_count())
    # JAX's preemption notifier takes SIGTERM and keeps training; a scheduler's (scancel, timeout)
    # or a user's SIGTERM should end the process, as it does without jax.distributed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    global joined, _timeout_s
    joined, _timeout_s = True, timeout_s
    return True


def guard_stderr(me: int, count: int) -> None:
    """This process's standard error through ``stderr_guard`` from now on: a lost coordination
    service ends the process from C++ with a stack trace, which the guard turns into one line."""
    sys.stderr.flush()
    guard = subprocess.Popen([sys.executable, "-m", "bnbench.parallel.stderr_guard", str(me), str(count)],
                             stdin=subprocess.PIPE, stdout=sys.stderr.fileno(), close_fds=True)
    os.dup2(guard.stdin.fileno(), sys.stderr.fileno())
    guard.stdin.close()  # fd 2 holds the pipe now; the guard ends when this process does


def fingerprint(argv, *facts) -> str:
    """What every process of a job must share: its arguments but the per-process ones, and ``facts``
    (the data each loaded)."""
    per_process_options, per_process_flags = options.per_process()
    shared, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if name in per_process_options:
            skip = "=" not in word
            continue
        if name in per_process_flags:
            continue
        shared.append(word)
    return hashlib.sha256(repr((shared, facts)).encode()).hexdigest()[:16]


def _client():
    # The key-value store JAX's processes share. jax (0.10) has no public API for it, and the
    # handshake needs it: a collective cannot carry "process 2 stopped, and why".
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def agree(mine: str) -> None:
    """Says this process is ready to train with fingerprint ``mine`` and waits until every other
    process has said so too; raises PeerFailed, naming the process, if one stopped instead, was
    started with another fingerprint, or does not answer within 10 x --peer-timeout."""
    if not joined:
        return
    import jax

    global _agreed
    me, count = jax.process_index(), jax.process_count()
    client = _client()
    client.key_value_set(f"bnbench/ready/{me}", f"ok {mine}")
    _agreed = True
    for other in range(count):
        if other == me:
            continue
        try:
            status = client.blocking_key_value_get(f"bnbench/ready/{other}", 10 * _timeout_s * 1000)
        except Exception as e:  # noqa: BLE001 - the store's timeout arrives as its runtime's error
            raise PeerFailed(f"process {other} of {count} did not get ready within {10 * _timeout_s} s "
                             f"({_first_line(e)}): see its output") from None
        if status.startswith("error "):
            raise PeerFailed(f"process {other} of {count} stopped before training: {status[6:]}")
        if status != f"ok {mine}":
            raise PeerFailed(f"process {other} of {count} was started with other arguments or other data than "
                             f"process {me}: give every process the same command but --process-id (and, if "
                             f"you like, --out, --data-dir, --cpu-devices)")


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
    if not _agreed or isinstance(error, PeerFailed):
        _stop_together(error)
    print(f"bnbench: error: {mid_run_message(error)}", file=sys.stderr, flush=True)
    _exit_now(EXIT_PEER_LOST if lost_peer(error) else 2)


def mid_run_message(error: BaseException) -> str:
    """One line for a failure during training: a lost peer, or this process's own error."""
    import jax

    me = f"process {jax.process_index()} of {jax.process_count()}"
    if lost_peer(error):
        return (f"{me}: {lost_peers()} of the job stopped or became unreachable ({_first_line(error)}); "
                "stopping too. See that process's output for its error; rerun every process (a sweep with "
                "--resume: its report holds every program finished)")
    if isinstance(error, BnbenchError):
        return f"{me}: {error}"
    return f"{me}: {type(error).__name__}: {_first_line(error)}"


def lost_peers(wait_s: float = 5.0) -> str:
    """Which process went away, as words: of two, the other; of more, those the coordination
    service no longer counts alive (asked for at most ``wait_s`` seconds), else "another process"."""
    import jax

    me, count = jax.process_index(), jax.process_count()
    if count == 2:
        return f"process {1 - me}"
    found: list = []

    def ask():
        try:
            found.append(_client().get_live_nodes(list(range(count))))
        except Exception:  # noqa: BLE001 - the service is gone too: process 0 ran it
            found.append(None)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(wait_s)
    live = found[0] if found else None
    if live is None:
        return "another process" if found == [] else "process 0"
    dead = [p for p in range(count) if p not in live and p != me]
    return " and ".join(f"process {p}" for p in dead) if dead else "another process"


def share_from_main(key: str, value: str) -> str:
    """``value`` as process 0 gives it, on every process of the job (``value`` itself outside one):
    what one process read and all must act on, such as the runs a resumed sweep's report holds."""
    if not joined:
        return value
    import jax

    client = _client()
    if jax.process_index() == 0:
        client.key_value_set(f"bnbench/shared/{key}", value)
        return value
    try:
        return client.blocking_key_value_get(f"bnbench/shared/{key}", 10 * _timeout_s * 1000)
    except Exception as e:  # noqa: BLE001 - the store's timeout arrives as its runtime's error
        raise PeerFailed(f"process 0 did not share {key} within {10 * _timeout_s} s ({_first_line(e)}): "
                         "see its output") from None


def post_failure(error: BaseException) -> str:
    """Before training: tells the other processes (waiting in ``agree``) why this one stops, and
    returns that reason as one line."""
    import jax

    text = str(error) if isinstance(error, BnbenchError) else f"{type(error).__name__}: {_first_line(error)}"
    if joined and not _agreed:
        try:
            _client().key_value_set(f"bnbench/ready/{jax.process_index()}", f"error {text}")
        except Exception:  # noqa: BLE001 - the store is gone: the others will find out on their own
            pass
    return f"process {jax.process_index()} of {jax.process_count()}: {text}"


def _stop_together(error: BaseException) -> None:
    """Before training, every process is alive: say why this one stops (the others read it in
    ``agree``), then leave through JAX's shutdown barrier with them, so that no process is ended
    by the coordination service for a peer that left first."""
    print(f"bnbench: error: {post_failure(error)}", file=sys.stderr, flush=True)
    try:
        import jax

        jax.distributed.shutdown()
    except Exception:  # noqa: BLE001 - a peer already gone: nothing left to wait for
        pass
    _exit_now(2)


def _exit_now(status: int) -> None:
    """The one place bnbench ends a process without Python's shutdown. JAX runs a shutdown barrier
    at exit that waits for every process of the job; after a peer is lost (or after the others were
    already told to stop) that barrier can only hang until the coordination service kills the
    process with its own message. Output is flushed first; reports were written atomically before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
