"""The standard error of one process of a job, passed through a small process of its own:
``python -m bnbench.parallel.stderr_guard I N`` (started by ``distributed.guard_stderr``).

Why: when JAX's coordination service is lost (process 0, which runs it, died) or reports a peer
lost, JAX's client ends the process from a C++ thread with a fatal log and a stack trace, which
Python cannot catch (the client's callback for it cannot be given from Python). This process sees
that text, prints bnbench's one line naming the lost process instead, and drops the trace; all
other output passes through unchanged and at once (progress bars included). It ends when the
process it guards does (end of its input).
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

FATAL = b"Terminating process because the JAX distributed service detected fatal errors"


def lost_words(text: str, me: int) -> str:
    """The lost process, as words, from the coordination service's error text."""
    if "failed to send rpc to coordination service" in text.lower() or "leader task" in text.lower():
        return "process 0 (which runs the job's coordination service)"
    listed = re.search(r"unhealthy[^:\n]*:[ \t]*\n(.*?)(?:\n\s*[A-Za-z]|\Z)", text, re.S)
    block = listed.group(1) if listed else text
    tasks = re.findall(r"task:(\d+)", block) or (re.findall(r"\b(\d+)\b", block) if listed else [])
    tasks = sorted({int(t) for t in tasks} - {me})
    if tasks:
        return " and ".join(f"process {t}" for t in tasks)
    return "another process"


def one_line(text: str, me: int, count: int) -> str:
    fatal = next((line for line in text.splitlines() if FATAL.decode() in line), "")
    reason = fatal.split("absl::Status:", 1)[-1].strip().split(". ")[0][:200] if "absl::Status:" in fatal else ""
    return (f"bnbench: error: process {me} of {count}: {lost_words(text, me)} of the job stopped or became "
            f"unreachable ({reason or 'the coordination service said so'}); stopping too. Rerun every process "
            "(a sweep with --resume: its report holds every program finished)\n")


HOLD_S = 2.0  # how long the agent's error lines are held back, waiting for the fatal line


def guard(source: int, sink: int, me: int, count: int, hold_s: float = HOLD_S) -> None:
    """Copies ``source`` to ``sink`` as it comes, but the coordination agent's error: from its first
    log line on, the output is held; if the fatal line follows, everything to the end (the trace)
    becomes one line; if not within ``hold_s`` seconds, what was held passes unchanged."""
    held, holding_since, fatal = b"", None, False
    while True:
        timeout = None if holding_since is None else max(0.0, holding_since + hold_s - time.monotonic())
        ready, _, _ = select.select([source], [], [], timeout)
        chunk = os.read(source, 65536) if ready else None
        if chunk == b"":
            break
        if chunk is None:  # held long enough: not the fatal error
            os.write(sink, held)
            held, holding_since = b"", None
            continue
        if fatal:
            held += chunk
            continue
        text = held + chunk
        if holding_since is None:
            start = _agent_line(text)
            if start < 0:
                # A partial line that may be the start of the agent's log line waits for the rest.
                tail = text.rsplit(b"\n", 1)[-1]
                keep = len(tail) if re.match(rb"^[EF]\d{0,4}( |$)", tail) else 0
                os.write(sink, text[:len(text) - keep])
                held = text[len(text) - keep:]
                continue
            os.write(sink, text[:start])
            text, holding_since = text[start:], time.monotonic()
        held = text
        fatal = FATAL in held
    if fatal:
        os.write(sink, one_line(held.decode(errors="replace"), me, count).encode())
    else:
        os.write(sink, held)


def _agent_line(text: bytes) -> int:
    """Where the coordination agent's first error log line starts in ``text``, or -1."""
    for match in re.finditer(rb"(?m)^[EF]\d{4} [^\n]*", text):
        if b"coordination_service" in match.group(0) or FATAL in match.group(0):
            return match.start()
    return -1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the guarded process's to answer; then its end ends this
    guard(0, 1, int(sys.argv[1]), int(sys.argv[2]))
