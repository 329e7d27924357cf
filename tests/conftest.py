"""Small, learnable stand-ins for Fashion-MNIST, written in the real file formats."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from data_helpers import make_idx_folder

from bnbench.parallel import devices

# Two CPU devices, so that seeds spread over devices are tested too (a no-op on a GPU).
devices.expose_cpu_devices(2)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion_mnist"


def pytest_report_collectionfinish(config, start_path, items):
    """Says up front what runs and how long it took here last time (pytest's cache keeps each
    test's duration from the last run on this machine; none on a fresh clone)."""
    durations = config.cache.get("bnbench/durations", {}) if getattr(config, "cache", None) else {}
    known = [durations[item.nodeid] for item in items if item.nodeid in durations]
    tier = config.getoption("markexpr") or "all"
    line = (f"bnbench: {len(items)} tests (-m {tier!r}; the slow tier: subprocess runs, Keras, several processes, "
            "fuzzing: pytest tests/ -m slow)")
    if known:
        estimate = sum(known) * len(items) / len(known)
        line += f"; about {estimate / 60:.1f} minutes, from the last run of these tests on this machine"
    return [line]


def pytest_runtest_logreport(report):
    _DURATIONS[report.nodeid] = _DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    if getattr(session.config, "cache", None) and _DURATIONS:
        session.config.cache.set("bnbench/durations", {**session.config.cache.get("bnbench/durations", {}),
                                                       **_DURATIONS})


_DURATIONS: dict[str, float] = {}  # per test: setup, call and teardown, this session


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's dataset cache."""
    monkeypatch.setenv("BNBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def closed_url():
    """A URL on 127.0.0.1 where nothing listens: what an offline machine sees, without the network.
    The port stays bound (never listening) for the session, so no test server can take it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/release/"


@pytest.fixture(autouse=True)
def _no_tfds_dir_and_no_internet(tmp_path_factory, monkeypatch, closed_url):
    """Tests never read ~/tensorflow_datasets, and a load that would download goes to a closed local
    port unless the test names its own server: no test reaches beyond 127.0.0.1."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path_factory.mktemp("tfds-empty")))
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", closed_url)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    """5,300 training images (so the notebook's 5,000-image validation split leaves 300) and 200 test."""
    return make_idx_folder(tmp_path_factory.mktemp("idx"))


@pytest.fixture
def real_data_dir() -> Path:
    folder = Path(os.environ.get("BNBENCH_REAL_DATA", REAL_DATA))
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the real Fashion-MNIST IDX files are not in {folder} (set BNBENCH_REAL_DATA)")
    return folder
