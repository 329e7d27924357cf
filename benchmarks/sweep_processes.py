"""Runs per hour of one sweep against the number of localhost processes (a script, not a test):

    python benchmarks/sweep_processes.py --data-dir DIR [--processes 1,2,4] [--out docs/reports/FILE.json]

Each point is one whole job, timed from the launch of its processes to the last one's end: start,
data loading and compiling in every process, training, and the gather of the runs on process 0.
The sweep is the same at every point (``SWEEP`` below); only the processes differ. Prints a
Markdown table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEARNING_RATES = "0.005,0.01,0.02,0.03,0.05,0.1,0.2,0.3"
SWEEP = ["sweep", "--variant", "seed_bn", "--learning-rate", LEARNING_RATES, "--seeds", "1", "--epochs", "1",
         "--quiet"]
RUNS = len(LEARNING_RATES.split(","))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(processes: int, data_dir: str, folder: Path) -> float:
    """Seconds from launch to the end of the last of ``processes`` processes of one sweep."""
    out = folder / f"p{processes}.json"
    common = [sys.executable, "-m", "bnbench.cli", *SWEEP, "--data-dir", data_dir, "--out", str(out)]
    port = free_port()
    start = time.perf_counter()
    if processes == 1:
        launched = [subprocess.Popen(common, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    else:
        launched = [subprocess.Popen([*common, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                                      str(processes), "--process-id", str(i)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    for i in range(processes)]
    for p in launched:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{processes} processes: exit {p.returncode}: {err[-1000:]}")
    seconds = time.perf_counter() - start
    assert len(json.loads(out.read_text())["runs"]) == RUNS
    return seconds


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                platform.machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    points = []
    with tempfile.TemporaryDirectory() as folder:
        for count in [int(p) for p in args.processes.split(",")]:
            seconds = job(count, args.data_dir, Path(folder))
            points.append({"processes": count, "runs": RUNS, "seconds": round(seconds, 2),
                           "runs_per_hour": round(RUNS * 3600 / seconds),
                           # Others' work on the machine: what makes the points of a shared one differ.
                           "load_average_1min_after": round(os.getloadavg()[0], 2)})
            print(f"{count} process(es): {seconds:.1f} s, {RUNS * 3600 / seconds:.0f} runs/hour", file=sys.stderr)
    result = {"sweep": " ".join(SWEEP), "machine": {"cpu": cpu_model(), "usable_cores": len(os.sched_getaffinity(0))},
              "points": points}
    print("| processes | seconds | runs/hour |\n| --- | --- | --- |")
    for p in points:
        print(f"| {p['processes']} | {p['seconds']:.1f} | {p['runs_per_hour']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
