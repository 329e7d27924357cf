"""What a run ran on: versions, devices, CPU, XLA settings and the git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

from bnbench.parallel.devices import usable_cores


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# The vector extensions that decide which kernels XLA's CPU backend emits, and so the last bits of
# a CPU run's results: two reports that differ here may differ in those bits.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none, as on macOS)."""
    try:
        return _parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


def _parse_cpuinfo(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The processor's full model name, with family/model/stepping where the name is generic
    (a VM often says only "Intel(R) Xeon(R) Processor" or "AMD EPYC Processor")."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        name += f" (family {info['cpu family']}, model {info.get('model', '?')}, stepping {info.get('stepping', '?')})"
    return name


def cpu_flags() -> list[str]:
    """Which of VECTOR_FLAGS the processor reports (x86 'flags', Arm 'Features')."""
    info = _cpuinfo()
    present = set((info.get("flags") or info.get("Features") or "").split())
    return [flag for flag in VECTOR_FLAGS if flag in present]


def git_commit() -> str | None:
    """The commit of the bnbench checkout this runs from, with '-dirty' if its code has changes
    (reports being rewritten under results/ or reports/ do not change what ran)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!results", ":!reports"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "jax": _version("jax"), "jaxlib": _version("jaxlib"), "flax": _version("flax"),
        "optax": _version("optax"), "bnbench": _version("bnbench"),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),  # processes of a jax.distributed job (1 otherwise)
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "usable_cores": usable_cores(),  # what the run could use; cpu_count is what the machine has
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
        "git_commit": git_commit(),
    }
