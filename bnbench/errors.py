"""The one exception type that the command line turns into a one-line message."""


class BnbenchError(Exception):
    """A problem the user can fix; its message says what was wrong and how to fix it."""
