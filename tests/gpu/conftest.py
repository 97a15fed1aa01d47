"""Shared pieces of the `gpu` tests: the engine tests' helpers, the sweep tests' fixtures, and
what nvidia-smi says about the GPU's processes.

Every test module here is marked `gpu` and skips, with the reason, where torch sees no CUDA
device. The default suite deselects them (`-m 'not slow and not gpu'` in pyproject.toml);
`pytest -m gpu tests/gpu` runs them (benchmarks/gpu_check.sh does, on the GPU machine).

Nothing is copied from the CPU tests: the engine tests' model, batches and fp32 references
come from tests/trainables/test_engine.py, and the `hpsearch` command fixtures (`cli`,
`records`, `hpsearch_environ`) from tests/hpsearch/conftest.py, both loaded by path (the
suite runs with --import-mode=importlib, where test folders are not packages).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    """Import the file at `path` as module `name` (once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_engine_tests = _load("_gpu_shared_engine_tests", TESTS / "trainables" / "test_engine.py")
_hpsearch_conftest = _load("_gpu_shared_hpsearch_conftest", TESTS / "hpsearch" / "conftest.py")
_root_conftest = _load("_gpu_shared_root_conftest", TESTS / "conftest.py")

# Fixtures of those files, registered here for tests/gpu/ (pytest finds them by name).
ds_env = _engine_tests.ds_env
cli = _hpsearch_conftest.cli
records = _hpsearch_conftest.records
hpsearch_environ = _hpsearch_conftest.hpsearch_environ


@pytest.fixture(scope="session")
def engine_tests() -> ModuleType:
    """tests/trainables/test_engine.py as a module: TinyMultitask, _batches, _train,
    _reference_pcgrad_steps, _reference_adamw, STEPS."""
    return _engine_tests


def _module_child_environ(folder: Path) -> dict[str, str]:
    """tests/conftest.py's `child_environ` for a module-scoped fixture (that one is per
    test): the same variables left out, and a Ray token of the module's own in `folder`."""
    token = folder / "ray_auth_token"
    if not token.exists():
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in _root_conftest.NOT_INHERITED}
    env.update({"RAY_AUTH_TOKEN_PATH": str(token), "HF_HUB_OFFLINE": "1"})
    return env


@pytest.fixture(scope="session")
def hpsearch_tools() -> SimpleNamespace:
    """For module-scoped fixtures that run `hpsearch` once for several tests:
    env(folder) -> the child environment, run(args, env, timeout) -> CompletedProcess,
    records(exp) -> the trial records."""
    return SimpleNamespace(
        env=lambda folder: _hpsearch_conftest.hpsearch_env(_module_child_environ(folder)),
        run=_hpsearch_conftest.run_cli,
        records=_hpsearch_conftest.trial_records,
    )


def compute_apps() -> dict[int, int] | None:
    """GPU memory (MiB) of each process holding a CUDA context, as nvidia-smi lists them;
    None where nvidia-smi is absent or does not answer."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    apps: dict[int, int] = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            apps[int(fields[0])] = apps.get(int(fields[0]), 0) + int(fields[1])
    return apps


def gpu_used_mib() -> int | None:
    """Memory in use on GPU 0 (MiB) as nvidia-smi reports it; None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--id=0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out) if out.isdigit() else None


@pytest.fixture(scope="session")
def gpu_used():
    """`gpu_used_mib` as a fixture."""
    return gpu_used_mib


@pytest.fixture(scope="session")
def gpu_apps():
    """`compute_apps` as a fixture: call it for {pid: MiB} (or None without nvidia-smi)."""
    return compute_apps


class AppSampler:
    """Samples `compute_apps` every `interval` seconds in a thread while a sweep runs."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            apps = compute_apps()
            if apps is not None:
                self.samples.append((time.time(), apps))
            self._stop.wait(self.interval)

    def __enter__(self) -> AppSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def most_at_once(self, exclude: set[int]) -> int:
        """The most processes (not in `exclude`) seen holding GPU memory in one sample."""
        return max(
            (sum(1 for pid, mib in apps.items() if pid not in exclude and mib > 0))
            for _, apps in self.samples
        )

    def pids(self, exclude: set[int]) -> set[int]:
        """Every process (not in `exclude`) seen holding GPU memory."""
        return {pid for _, apps in self.samples for pid in apps if pid not in exclude}


@pytest.fixture(scope="session")
def app_sampler_class() -> Iterator[type[AppSampler]]:
    """The AppSampler class (use it as a context manager around the command under test)."""
    yield AppSampler
