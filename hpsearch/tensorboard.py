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
answers.

`serve_forever` owns its child whatever happens: while it runs, SIGINT (Ctrl-C) and SIGTERM
only request a stop, which it carries out at the next safe point (within a fraction of a
second), so no signal can land between starting TensorBoard and taking charge of it, or in
the middle of stopping it; TensorBoard gets SIGTERM, and SIGKILL if it is not gone within
STOP_TIMEOUT_S. A SIGTERM is passed on to the previous handler once TensorBoard is stopped,
so the process still ends as a SIGTERM ends it.

Nor does TensorBoard outlive a parent killed outright (SIGKILL): on Linux, started from the
main thread, it gets SIGKILL from the kernel when its parent dies (prctl PR_SET_PDEATHSIG);
its data server exits with it (when its stdin closes).
"""

from __future__ import annotations

import ctypes
import importlib.util
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TextIO

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
STOP_TIMEOUT_S = 3.0  # how long it may take to exit on SIGTERM before it gets SIGKILL
RELOAD_INTERVAL_S = 5.0  # how often it rescans the logdir for new event files
_WILDCARDS = {"0.0.0.0", "::"}


class TensorBoardHandle:
    """A running TensorBoard child process; a context manager that stops it on exit.

    Attributes:
        url: Where it answers, e.g. `http://127.0.0.1:6006/` (for a wildcard bind, the
            loopback address of this machine).
        host: The address it is bound to.
        port: Its port.
        logdir: The folder it reads.
        process: The `subprocess.Popen` of TensorBoard.
        args: The command line it was started with.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        args: list[str],
        url: str,
        host: str,
        port: int,
        logdir: Path,
        log_path: Path,
    ) -> None:
        self.process = process
        self.args = args
        self.url = url
        self.host = host
        self.port = port
        self.logdir = logdir
        self._log_path = log_path

    @property
    def running(self) -> bool:
        """Whether the TensorBoard process has not exited yet."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        """The last lines TensorBoard wrote to stdout/stderr."""
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop TensorBoard (SIGTERM, then SIGKILL after `timeout` seconds); idempotent.

        Interrupted while waiting (a KeyboardInterrupt), it still sends SIGKILL before the
        exception goes on, so the process never outlives a `with` block.
        """
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> TensorBoardHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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
    """`start_tensorboard`, giving up with `_StopRequested` as soon as `should_stop()`."""
    logdir = Path(logdir).expanduser()
    if not logdir.exists():
        raise ConfigError(
            f"TensorBoard logdir {logdir} does not exist; pass an experiment folder a sweep "
            "wrote (under its --storage-path)"
        )
    if not logdir.is_dir():
        raise ConfigError(f"TensorBoard logdir {logdir} is a file; pass the folder that holds it")
    _check_host(host, allow_remote)
    if not 0 <= port <= 65535:
        raise ConfigError(f"TensorBoard port {port} is out of range; use 1-65535, or 0 for any")
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("tensorboard is not installed; run `pip install tensorboard`")

    attempts = 3 if port == 0 else 1  # a picked port can be taken before TensorBoard binds it
    for attempt in range(attempts):
        chosen = _bindable_port(host, port)
        handle = _launch(logdir.resolve(), host, chosen, reload_interval_s)
        try:
            _wait_until_ready(handle, timeout_s, should_stop)
            return handle
        except _PortTaken:
            handle.stop()
            if attempt + 1 == attempts:
                raise ConfigError(
                    f"port {chosen} on {host} is already in use; pick another --port "
                    "(or 0 for any free one)"
                ) from None
        except BaseException:
            handle.stop()
            raise
    raise AssertionError("unreachable")


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

    TensorBoard is stopped before this returns, whenever the signal comes (see the module
    docstring); after a SIGTERM the previous SIGTERM handler runs once it is stopped (by
    default: the process ends, as it would have without this function).

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
    out = out or sys.stdout
    with _StopSignals() as stop:
        try:
            status = _serve(logdir, host, port, allow_remote, out, start_timeout_s, stop.requested)
        except _StopRequested:  # during start-up; `_start` has stopped TensorBoard
            status = 0
    if stop.received == signal.SIGTERM:
        signal.raise_signal(signal.SIGTERM)
    return status


def _serve(
    logdir: Path | str,
    host: str,
    port: int,
    allow_remote: bool,
    out: TextIO,
    start_timeout_s: float,
    should_stop: Callable[[], bool],
) -> int:
    """Start TensorBoard, print where it answers, and wait for it to exit or `should_stop()`."""
    with _start(
        logdir,
        host,
        port,
        allow_remote,
        start_timeout_s,
        RELOAD_INTERVAL_S,
        should_stop=should_stop,
    ) as tb:
        print(f"TensorBoard on {tb.logdir} at {tb.url}  (Ctrl-C to stop)", file=out)
        if _is_loopback(host):
            print(
                f"from another machine: ssh -L {tb.port}:127.0.0.1:{tb.port} USER@THIS_HOST, "
                f"then open http://127.0.0.1:{tb.port}/",
                file=out,
            )
        out.flush()
        while not should_stop():
            try:
                status = tb.process.wait(timeout=_POLL_S)
            except subprocess.TimeoutExpired:
                continue
            if should_stop():  # Ctrl-C in a terminal reaches TensorBoard too
                break
            print(f"TensorBoard exited with status {status}: {tb.log_tail(3)}", file=sys.stderr)
            return status or 1
        return 0


# --------------------------------------------------------------------------------------------

_POLL_S = 0.2  # how often the waits look for a stop request or a TensorBoard that exited


class _StopRequested(Exception):
    """A stop signal came while TensorBoard was starting."""


class _StopSignals:
    """While entered, SIGINT and SIGTERM only record that a stop was asked for.

    Python's defaults are the reason: SIGINT raises KeyboardInterrupt at whatever line runs,
    for instance between `Popen` returning and its handle entering a `with`, and SIGTERM ends
    the process without any cleanup; both leave TensorBoard running. Recorded instead, the
    stop is carried out where the code checks `requested()`. Only the main thread can set
    signal handlers; elsewhere this does nothing (signals interrupt only the main thread).

    Attributes:
        received: The first stop signal that came, or None.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int] = {}

    def requested(self) -> bool:
        return self.received is not None

    def _record(self, signal_number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal_number

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signal_number in self._SIGNALS:
                previous = signal.signal(signal_number, self._record)
                self._previous[signal_number] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signal_number, handler in self._previous.items():
            signal.signal(signal_number, handler)
        self._previous.clear()


def _never() -> bool:
    return False


class _PortTaken(Exception):
    """TensorBoard exited at start because its port was taken."""


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_host(host: str, allow_remote: bool) -> None:
    if not host:
        raise ConfigError("TensorBoard host is empty; use 127.0.0.1")
    if _is_loopback(host) or allow_remote:
        return
    raise ConfigError(
        f"TensorBoard host {host!r} is not a loopback address, and TensorBoard has no login: "
        "anyone who reaches the port reads every run; keep 127.0.0.1 and forward the port "
        "(ssh -L 6006:127.0.0.1:6006 USER@HOST), or pass --allow-remote (allow_remote=True) "
        "on a network you trust"
    )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bindable_port(host: str, port: int) -> int:
    """`port` (for 0: a free one) once a socket could bind it on `host`; one-line ConfigError
    if not (the port is taken, or `host` is no address of this machine)."""
    bind_host = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    with socket.socket(_family(bind_host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot bind TensorBoard to {host}:{port} ({exc.strerror}); pick another "
                "--port (or 0 for any free one), or a --host of this machine"
            ) from None
        return int(sock.getsockname()[1])


def _url(host: str, port: int) -> str:
    if host in _WILDCARDS:
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _launch(logdir: Path, host: str, port: int, reload_interval_s: float) -> TensorBoardHandle:
    fd, log_name = tempfile.mkstemp(prefix="hpsearch-tensorboard-", suffix=".log")
    cmd = [
        sys.executable, "-m", "tensorboard.main",
        "--logdir", str(logdir),
        "--host", host,
        "--port", str(port),
        "--reload_interval", str(reload_interval_s),
    ]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent(),
        )
    return TensorBoardHandle(
        process, args=cmd, url=_url(host, port), host=host, port=port, logdir=logdir,
        log_path=Path(log_name),
    )  # fmt: skip


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: the kernel SIGKILLs the child when this process dies. None off Linux, and
    off the main thread (the signal would come when the thread that started it ends)."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:  # in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), signal.SIGKILL)

    return set_parent_death_signal


def _wait_until_ready(
    tb: TensorBoardHandle, timeout_s: float, should_stop: Callable[[], bool]
) -> None:
    """Return once TensorBoard's HTTP API answers; `_StopRequested` once `should_stop()`."""
    # Straight to the address, never through an http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if should_stop():
            raise _StopRequested
        status = tb.process.poll()
        if status is not None:
            tail = tb.log_tail()
            if "already in use" in tail or "could not bind" in tail.lower():
                raise _PortTaken
            last = tail.splitlines()[-1] if tail else "no output"
            raise RuntimeError(f"TensorBoard exited with status {status} at start: {last}")
        try:
            with opener.open(tb.url + "data/runs", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(_POLL_S)
    raise TimeoutError(
        f"TensorBoard on {tb.url} did not answer within {timeout_s:.0f} s: {tb.log_tail(1)}"
    )
