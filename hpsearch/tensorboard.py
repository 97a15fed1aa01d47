"""TensorBoard over an experiment folder, on 127.0.0.1 unless told otherwise.

    hpsearch tensorboard results/EXPERIMENT [--port 6006]
    # on a cluster head, seen from your laptop:
    ssh -L 6006:127.0.0.1:6006 ubuntu@HEAD   then open http://127.0.0.1:6006

TensorBoard has no login: whoever reaches its port reads every run. It therefore binds to a
loopback address, and anything else (0.0.0.0, a LAN address) needs `allow_remote=True`
(`--allow-remote`). Remote viewing goes through an ssh tunnel instead.

    with start_tensorboard(Path("results/demo")) as tb:   # port 0: any free port
        print(tb.url)

TensorBoard runs as a child process, `python -m tensorboard.main --logdir ... --host ...
--port ...` (an argument list, no shell); `start_tensorboard` returns once its HTTP API
answers. `serve_forever` owns that child whatever happens (SIGINT and SIGTERM only request a
stop; a TensorBoard killed with its parent): `hpsearch.local_server`, which
`hpsearch dashboard` shares.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from hpsearch import local_server
from hpsearch.local_server import ServerHandle, check_host, check_port
from trainables.errors import ConfigError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TensorBoardHandle",
    "serve_forever",
    "start_tensorboard",
]

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked: TensorBoard has no authentication
DEFAULT_PORT = 6006
START_TIMEOUT_S = 60.0  # how long TensorBoard may take to answer its HTTP API (a loaded machine)
RELOAD_INTERVAL_S = 5.0  # how often it rescans the logdir for new event files


class TensorBoardHandle(ServerHandle):
    """A running TensorBoard child process; a context manager that stops it on exit.

    Attributes (besides `ServerHandle`'s url, host, port, process, args):
        logdir: The folder it reads.
    """

    name = "TensorBoard"
    ready_path = "data/runs"

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        args: list[str],
        host: str,
        port: int,
        logdir: Path,
        log_path: Path,
    ) -> None:
        super().__init__(process, args=args, host=host, port=port, log_path=log_path)
        self.logdir = logdir

    def __enter__(self) -> TensorBoardHandle:
        return self

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"TensorBoardHandle({self.url}, logdir={str(self.logdir)!r}, {state})"


def start_tensorboard(
    logdir: Path | str,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    allow_remote: bool = False,
    timeout_s: float = START_TIMEOUT_S,
    reload_interval_s: float = RELOAD_INTERVAL_S,
) -> TensorBoardHandle:
    """Start TensorBoard on `logdir` and wait until its HTTP API answers.

    Args:
        logdir: An existing folder with event files (an experiment folder, or a whole
            `--storage-path`; TensorBoard searches it recursively).
        host: Address to bind. Loopback (127.0.0.1, ::1, localhost) unless `allow_remote`.
        port: Port to bind; 0 picks a free one.
        allow_remote: Permit a non-loopback `host` (TensorBoard has no authentication).
        timeout_s: How long to wait for `/data/runs` to answer.
        reload_interval_s: How often TensorBoard rescans `logdir` for new events.

    Returns:
        The handle; `handle.url` is where it answers. Stop it with `handle.stop()` or by
        using the handle as a context manager.

    Raises:
        ConfigError: `logdir` is missing or not a folder, `host` is not loopback without
            `allow_remote`, or `port` is out of range or already taken.
        RuntimeError: TensorBoard exited before answering.
        TimeoutError: TensorBoard did not answer within `timeout_s`.
    """
    return _start(
        logdir, host, port, allow_remote, timeout_s, reload_interval_s, should_stop=_never
    )


def serve_forever(
    logdir: Path | str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
    out: TextIO | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> int:
    """Run TensorBoard in the foreground until Ctrl-C or SIGTERM (for `hpsearch tensorboard`).

    TensorBoard is stopped before this returns, whenever the signal comes; after a SIGTERM
    the previous SIGTERM handler runs once it is stopped (by default: the process ends, as
    it would have without this function).

    Args:
        logdir: Folder with event files.
        host: Address to bind (loopback unless `allow_remote`).
        port: Port to bind; 0 picks a free one.
        allow_remote: Permit a non-loopback `host`.
        out: Where to print the address (default stdout).
        start_timeout_s: How long TensorBoard may take to answer.

    Returns:
        0 after Ctrl-C; TensorBoard's exit status (or 1) if it stopped by itself.
    """
    target = out or sys.stdout

    def serve(should_stop: Callable[[], bool]) -> int:
        tb = _start(
            logdir,
            host,
            port,
            allow_remote,
            start_timeout_s,
            RELOAD_INTERVAL_S,
            should_stop=should_stop,
        )
        banner = f"TensorBoard on {tb.logdir} at {tb.url}  (Ctrl-C to stop)"
        return local_server.serve_until_stopped(tb, banner, should_stop, target)

    return local_server.run_in_foreground(serve)


# --------------------------------------------------------------------------------------------


def _never() -> bool:
    return False


def _start(
    logdir: Path | str,
    host: str,
    port: int,
    allow_remote: bool,
    timeout_s: float,
    reload_interval_s: float,
    *,
    should_stop: Callable[[], bool],
) -> TensorBoardHandle:
    """`start_tensorboard`, giving up with `StopRequested` as soon as `should_stop()`."""
    logdir = Path(logdir).expanduser()
    if not logdir.exists():
        raise ConfigError(
            f"TensorBoard logdir {logdir} does not exist; pass an experiment folder a sweep "
            "wrote (under its --storage-path)"
        )
    if not logdir.is_dir():
        raise ConfigError(f"TensorBoard logdir {logdir} is a file; pass the folder that holds it")
    check_host(host, allow_remote, what="TensorBoard", reads="every run", port=DEFAULT_PORT)
    check_port(port, "TensorBoard")
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("tensorboard is not installed; run `pip install tensorboard`")
    folder = logdir.resolve()
    return local_server.start(
        lambda chosen: _launch(folder, host, chosen, reload_interval_s),  # _launch looked up late
        host,
        port,
        what="TensorBoard",
        timeout_s=timeout_s,
        should_stop=should_stop,
    )


def _launch(logdir: Path, host: str, port: int, reload_interval_s: float) -> TensorBoardHandle:
    cmd = [
        sys.executable, "-m", "tensorboard.main",
        "--logdir", str(logdir),
        "--host", host,
        "--port", str(port),
        "--reload_interval", str(reload_interval_s),
    ]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process, log_path = local_server.launch(cmd, log_prefix="hpsearch-tensorboard-", env=env)
    return TensorBoardHandle(
        process, args=cmd, host=host, port=port, logdir=logdir, log_path=log_path
    )
