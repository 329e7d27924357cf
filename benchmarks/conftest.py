"""The harness's hooks and fixtures live in ``bnbench.pytest_plugin``; importing them here makes
them this folder's, so that `pytest benchmarks/` uses them and `pytest tests/` does not."""

from bnbench.pytest_plugin import *  # noqa: F401,F403
