"""The one exception type that the command line turns into a one-line message, and the exit statuses."""


class BnbenchError(Exception):
    """A problem the user can fix; its message says what was wrong and how to fix it."""


# Exit statuses of bnbench's commands and of `pytest benchmarks/`, besides 0 (done) and 2 (a one-line
# error). 3, 4 and 5 are left to pytest (internal error, usage error, no test collected), so that the
# harness's mean one thing.
EXIT_GATE_FAILED = 1
EXIT_ALL_DIVERGED = 6
EXIT_REPORT_MOVED = 7
EXIT_PEER_LOST = 8
