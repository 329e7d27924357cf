"""Sweeps over several processes: runs balanced over every device whatever their number (padding
discarded), equal run for run to one process; the multi-process checks run localhost processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from bnbench.data.synthetic import synthetic_dataset
from bnbench.engine import train
from bnbench.errors import BnbenchError
from bnbench.models import variants
from bnbench.parallel import devices


class FakeDevice:
    """A device of process ``process_index``, as a mesh is laid out over (never computed on)."""

    platform = "cpu"

    def __init__(self, process_index: int, number: int):
        self.process_index, self.id = process_index, number

    def __repr__(self):
        return f"FakeDevice({self.process_index}, {self.id})"


def job(processes: int, per_process: int) -> list[FakeDevice]:
    return [FakeDevice(p, p * per_process + i) for p in range(processes) for i in range(per_process)]


@pytest.mark.parametrize("processes, per_process", [(2, 1), (2, 2), (3, 1), (3, 2), (4, 3)])
@pytest.mark.parametrize("runs", [1, 2, 3, 5, 7, 12])
def test_every_device_of_every_process_trains_and_padding_costs_at_most_one_run_each(processes, per_process, runs):
    mesh = devices.seed_mesh(runs, job(processes, per_process))
    assert {d.process_index for d in mesh.devices.flat} == set(range(processes))
    assert devices.seed_devices(mesh) == processes * per_process
    trained = devices.trained_runs(runs, mesh)
    assert trained % devices.seed_devices(mesh) == 0 and runs <= trained < runs + devices.seed_devices(mesh)
    # Balanced: every device trains the same number of runs, the fewest that hold them all.
    assert trained // devices.seed_devices(mesh) == -(-runs // devices.seed_devices(mesh))


def test_one_process_keeps_its_even_layout_without_padding():
    cpu = jax.devices()  # two CPU devices (conftest)
    assert devices.seed_mesh(3, cpu) is None and devices.trained_runs(3, None) == 3
    mesh = devices.seed_mesh(4, cpu)
    assert devices.seed_devices(mesh) == 2 and devices.trained_runs(4, mesh) == 4


def test_a_layout_that_leaves_a_process_out_says_which_data_parallel_would_do():
    with pytest.raises(BnbenchError, match=r"--data-parallel 2 over the job's 3 devices \(3 processes\) leaves "
                                           r"process 2 without a device: pass --data-parallel 1,"):
        devices.seed_mesh(3, job(3, 1), 2, batch_sizes=[32])
    # 2 processes of 3 devices: 4 leaves process 1 two idle devices but reaches it; 32 splits over 2 and 4.
    mesh = devices.seed_mesh(1, job(2, 3), 4, batch_sizes=[32])
    assert mesh.shape == {"seed": 1, "data": 4}
    with pytest.raises(BnbenchError, match=r"pass --data-parallel 1 or 2 or 4 or 7 or 8,"):
        devices.seed_mesh(1, job(4, 2), 4 + 1)


@pytest.mark.slow  # two trainers compiled: 17 s on 2 shared cores
def test_padding_runs_are_trained_as_copies_and_never_returned(monkeypatch):
    """3 runs on a mesh of 2 shares: trained as 4 (the last repeated), the result holds 3, each equal,
    bit for bit, to the same run trained beside an explicit copy."""
    data = train.DeviceData.from_dataset(synthetic_dataset(train=256, validation=64, test=64))
    protocol, model = train.Protocol(epochs=1, batch_size=32), variants.get("seed_bn").model
    two = Mesh(np.array(jax.devices()[:2]), (devices.SEED_AXIS,))
    monkeypatch.setattr(devices, "seed_mesh", lambda *a, **k: two)
    padded = train.Trainer(model, protocol, data, 3)
    assert padded.trained_runs == 4
    lrs = [0.01, 0.03, 0.1]
    found = train.fit(padded, [0, 0, 0], hyperparams=padded.hyperparams(lrs, [0.99] * 3))
    explicit = train.Trainer(model, protocol, data, 4)
    expected = train.fit(explicit, [0, 0, 0, 0], hyperparams=explicit.hyperparams(lrs + [0.1], [0.99] * 4))
    for key in ("train_loss", "val_loss", "val_accuracy", "train_eval_accuracy"):
        assert found["history"][0][key].shape == (3,)
        np.testing.assert_array_equal(found["history"][0][key], expected["history"][0][key][:3])
    np.testing.assert_array_equal(found["test"]["accuracy"], expected["test"]["accuracy"][:3])
    assert len(set(np.round(found["history"][0]["train_loss"], 6))) == 3  # three different learning rates


# Several localhost processes (the slow tier): the same commands as a user types.

def run_cli(*args, cwd=None):
    return subprocess.Popen([sys.executable, "-m", "bnbench.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_processes(count: int, *args, out: Path, timeout: int = 300, peer_timeout: int = 20) -> list:
    port = free_port()
    job = [run_cli(*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", count, "--process-id", i,
                   "--out", out, "--peer-timeout", peer_timeout) for i in range(count)]
    results = []
    for p in job:
        stdout, stderr = p.communicate(timeout=timeout)
        results.append((p.returncode, stdout, stderr))
    return results


def same_runs(a: dict, b: dict) -> None:
    """Run for run the same training (times aside), in the same order: every accuracy equal, every
    loss equal to 1e-6 (a mean over a split, which XLA may sum in another order in another layout)."""
    assert [(r["variant"], r.get("config"), r["seed"]) for r in a["runs"]] == \
        [(r["variant"], r.get("config"), r["seed"]) for r in b["runs"]]
    for x, y in zip(a["runs"], b["runs"]):
        for e, f in [*zip(x["epochs"], y["epochs"]), (x, y)]:
            keys = [k for k in e if "accuracy" in k or "loss" in k]
            assert keys == [k for k in f if "accuracy" in k or "loss" in k]
            assert [e[k] for k in keys if "accuracy" in k] == [f[k] for k in keys if "accuracy" in k]
            np.testing.assert_allclose([e[k] for k in keys if "loss" in k], [f[k] for k in keys if "loss" in k],
                                       rtol=1e-6)


@pytest.mark.slow
# The sweep's case runs in CI; run's (the same spreading of runs over processes, and run's padding
# runs are tested in one process above) is kept for the soak tier, so that CI stays within its time.
@pytest.mark.parametrize("command", [
    pytest.param(["run", "--variant", "seed_bn", "--seeds", 3], marks=pytest.mark.soak),
    ["sweep", "--variant", "seed_bn", "--learning-rate", "0.01,0.03,0.1", "--seeds", 1],
])
def test_run_counts_that_do_not_divide_train_on_two_processes_as_on_one(idx_dir, tmp_path, command):
    common = [*command, "--epochs", 1, "--data-dir", idx_dir, "--quiet"]
    one = run_cli(*common, "--out", tmp_path / "one.json")
    results = in_processes(2, *common, out=tmp_path / "two.json")
    assert one.wait(timeout=300) == 0, one.stderr.read()[-2000:]
    for rc, _, err in results:
        assert rc == 0, err[-2000:]
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert b["environment"]["process_count"] == 2 and len(b["runs"]) == 3
    same_runs(a, b)


@pytest.mark.slow
# Process 1's loss is the must-have and runs in CI; process 0's (the stderr guard's path) is the same
# drill again, minutes long, kept for `pytest tests/ -m soak` so that CI stays within its time.
@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.soak)])
def test_a_process_killed_mid_sweep_costs_only_its_unfinished_programs(idx_dir, tmp_path, victim):
    """Killed after the first program is written: the other process exits with one line naming it
    within the peer timeout (+10 s); the report holds every finished program; --resume on two
    processes trains only the rest, and the result is the uninterrupted sweep's."""
    import time

    common = ["sweep", "--variant", "seed_bn", "--batch-size", "32,64,128", "--learning-rate", "0.01,0.1",
              "--seeds", 1, "--epochs", 3, "--data-dir", idx_dir]
    whole = run_cli(*common, "--quiet", "--out", tmp_path / "whole.json")
    out, port, peer_timeout = tmp_path / "sweep.json", free_port(), 20
    job = [run_cli(*common, "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2, "--process-id", i,
                   "--out", out, "--peer-timeout", peer_timeout) for i in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not out.exists():  # process 0 writes the report after the first program
            assert time.monotonic() < deadline and all(p.poll() is None for p in job), "no program finished"
            time.sleep(0.2)
        job[victim].kill()
        killed = time.monotonic()
        _, err = job[1 - victim].communicate(timeout=peer_timeout + 10)
        assert time.monotonic() - killed < peer_timeout + 10
    finally:
        for p in job:
            p.kill()
    assert job[1 - victim].returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"bnbench: error: process {1 - victim} of 2: process {victim}") and \
        "stopped or became unreachable" in last, err[-2000:]
    assert "Traceback" not in err and "stack trace" not in err and "Terminating process" not in err, err[-3000:]
    partial = json.loads(out.read_text())
    assert 1 <= len(partial["summary"]) // 2 < 3  # whole programs of two configurations, not all three
    assert len(partial["runs"]) == len(partial["summary"])
    resumed = in_processes(2, *common, "--resume", out=out)
    for rc, _, err in resumed:
        assert rc == 0, err[-2000:]
    missing = 3 - len(partial["summary"]) // 2
    assert resumed[0][2].count(f"/{missing}] seed_bn, batch") == missing, resumed[0][2]  # only those
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]
    done, expected = json.loads(out.read_text()), json.loads((tmp_path / "whole.json").read_text())
    assert done["run_id"] == partial["run_id"] and len(done["runs"]) == 6
    same_runs(expected, done)


FATAL_LOG = b"""progress 1\rprogress 2\r
E1203 15:08:01.1 123 coordination_service_agent.cc:289] Polled an error from coordination service.
UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
2
The tasks have crashed. Check the task logs.
F1203 15:08:01.2 123 client.h:80] Terminating process because the JAX distributed service detected fatal errors. \
absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
2
*** Check failure stack trace: ***
    @     0x7f6de5040634  absl::log_internal::LogMessage::SendToLog()
"""


def guarded(*pieces: bytes, pause: float = 0.05, hold_s: float = 2.0) -> bytes:
    import os
    import threading
    import time

    from bnbench.parallel import stderr_guard

    source, into = os.pipe()
    out, sink = os.pipe()
    thread = threading.Thread(target=stderr_guard.guard, args=(source, sink, 0, 3, hold_s))
    thread.start()
    for piece in pieces:
        os.write(into, piece)
        time.sleep(pause)
    os.close(into)
    thread.join()
    os.close(sink)
    return os.read(out, 1 << 20)


@pytest.mark.parametrize("cut", [5, 60, 300, len(FATAL_LOG)])
def test_jaxs_fatal_log_for_a_lost_process_becomes_one_line_naming_it(cut):
    found = guarded(FATAL_LOG[:cut], FATAL_LOG[cut:]).decode()
    assert found.startswith("progress 1\rprogress 2\r\n")  # everything before passes, progress bars at once
    lines = found.split("\n")[1:]
    assert lines[1:] == [""] and lines[0].startswith("bnbench: error: process 0 of 3: process 2 of the job "), lines
    lost_leader = b"F1203 1 2 client.h:80] " + FATAL_LOG.split(b"client.h:80] ")[1].split(b"absl")[0] + \
        b"absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task died\n"
    assert "process 0 (which runs the job's coordination service)" in guarded(lost_leader).decode()


def test_the_agents_other_log_lines_pass_unchanged_after_a_wait():
    text = b"E1203 15:08:01.1 123 coordination_service_agent.cc:289] a note\nmore\n"
    assert guarded(text, b"after\n", pause=0.5, hold_s=0.2) == text + b"after\n"
