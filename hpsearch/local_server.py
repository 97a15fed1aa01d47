"""A local HTTP service with no login, run as a child process: what `hpsearch tensorboard`
(`hpsearch.tensorboard`) and `hpsearch dashboard` (`hpsearch.dashboard`) share.

- **Loopback unless asked.** Neither TensorBoard nor optuna-dashboard has a login, so a host
  that is not a loopback address is refused unless the caller passes `allow_remote`, and
  serving on one prints a warning.
- **One owner of the child.** `start` returns a `ServerHandle` only once the service answers
  its HTTP API; on any failure in between (its port taken, an exit, a timeout, a stop
  request) the child is stopped first. A port the caller left to chance (0) is picked again
  when another process takes it between the pick and the child's bind.
- **Signals.** `run_in_foreground` makes SIGINT and SIGTERM mere requests while it runs,
  carried out at the next safe point (within `POLL_S`), so no signal lands between `Popen`
  and a handle taking charge, or in the middle of a stop; a SIGTERM is passed on to the
  previous handler afterwards, so the process still ends as a SIGTERM ends it. On Linux the
  child also gets SIGKILL from the kernel when its parent dies outright (PR_SET_PDEATHSIG).
- Commands are argument lists, never a shell.
"""

from __future__ import annotations

import ctypes
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
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import TextIO, TypeVar

from trainables.errors import ConfigError

__all__ = [
    "POLL_S",
    "STOP_TIMEOUT_S",
    "ServerHandle",
    "StopRequested",
    "bind_host",
    "check_host",
    "check_port",
    "family",
    "is_loopback",
    "launch",
    "run_in_foreground",
    "serve_until_stopped",
    "start",
]

STOP_TIMEOUT_S = 3.0  # how long a child may take to exit on SIGTERM before it gets SIGKILL
POLL_S = 0.2  # how often the waits look for a stop request or a child that exited
_WILDCARDS = {"0.0.0.0", "::"}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopRequested(Exception):
    """A stop signal came while the service was starting (the child is already stopped)."""


class ServerHandle:
    """A running service child process; a context manager that stops it on exit.

    Subclasses name the service (`name`, used in messages), the path that answers once it is
    ready (`ready_path`), and how an exit at start says the port was taken (`port_taken`).

    Attributes:
        url: Where it answers, e.g. `http://127.0.0.1:6006/` (for a wildcard bind, the
            loopback address of this machine).
        host: The address it is bound to.
        port: Its port.
        process: The `subprocess.Popen` of the service.
        args: The command line it was started with.
    """

    name = "the server"
    ready_path = ""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        args: list[str],
        host: str,
        port: int,
        log_path: Path,
    ) -> None:
        self.process = process
        self.args = args
        self.url = _url(host, port)
        self.host = host
        self.port = port
        self._log_path = log_path

    @property
    def running(self) -> bool:
        """Whether the service process has not exited yet."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the service wrote to stdout/stderr."""
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def port_taken(self, status: int) -> bool:
        """Whether the service's exit at start (with `status`) means its port was taken."""
        tail = self.log_tail().lower()
        return "already in use" in tail or "could not bind" in tail

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the service (SIGTERM, then SIGKILL after `timeout` seconds); idempotent.

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

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


H = TypeVar("H", bound=ServerHandle)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool, *, what: str, reads: str, port: int) -> None:
    """One-line ConfigError unless `host` is loopback or `allow_remote`; `what` names the
    service ("TensorBoard"), `reads` what a stranger on its port would read."""
    if not host:
        raise ConfigError(f"{what} host is empty; use 127.0.0.1")
    if is_loopback(host) or allow_remote:
        return
    raise ConfigError(
        f"{what} host {host!r} is not a loopback address, and {what} has no login: anyone "
        f"who reaches the port reads {reads}; keep 127.0.0.1 and forward the port "
        f"(ssh -L {port}:127.0.0.1:{port} USER@HOST), or pass --allow-remote "
        "(allow_remote=True) on a network you trust"
    )


def check_port(port: int, what: str) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} port {port} is out of range; use 1-65535, or 0 for any")


def bind_host(host: str) -> str:
    """The address a socket binds for `host` (`localhost` as 127.0.0.1, IPv6 unbracketed)."""
    return "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def launch(
    cmd: list[str], *, log_prefix: str, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `cmd` with stdout and stderr in a fresh log file (returned with the process),
    stdin closed, and (on Linux, from the main thread) the kernel's SIGKILL when this process
    dies."""
    fd, log_name = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            preexec_fn=_die_with_parent(),
        )
    return process, Path(log_name)


def start(
    launch_on: Callable[[int], H],
    host: str,
    port: int,
    *,
    what: str,
    timeout_s: float,
    should_stop: Callable[[], bool],
) -> H:
    """`launch_on(port)` for a port bindable on `host` (`port`, or for 0 a free one), then
    wait until the service answers; the child is stopped on any failure before that.

    Raises:
        ConfigError: the port is taken, or `host` is no address of this machine.
        RuntimeError: the service exited at start for another reason.
        TimeoutError: it did not answer within `timeout_s`.
        StopRequested: `should_stop()` became true first.
    """
    attempts = 3 if port == 0 else 1  # a picked port can be taken before the child binds it
    for attempt in range(attempts):
        chosen = _bindable_port(host, port, what)
        handle = launch_on(chosen)
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


def serve_until_stopped(
    handle: ServerHandle, banner: str, should_stop: Callable[[], bool], out: TextIO
) -> int:
    """Own a started service until `should_stop()` or its own exit: print `banner` and how to
    reach it (an ssh tunnel for loopback, a warning on stderr otherwise), then wait.

    Returns:
        0 once stopped on request; the service's exit status (or 1) if it stopped by itself.
    """
    with handle:
        print(banner, file=out)
        if is_loopback(handle.host):
            print(
                f"from another machine: ssh -L {handle.port}:127.0.0.1:{handle.port} "
                f"USER@THIS_HOST, then open http://127.0.0.1:{handle.port}/",
                file=out,
            )
        else:
            print(
                f"warning: {handle.name} listens on {handle.host}:{handle.port} with no "
                "login: anyone who reaches that port reads what it serves",
                file=sys.stderr,
            )
        out.flush()
        while not should_stop():
            try:
                status = handle.process.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                continue
            if should_stop():  # Ctrl-C in a terminal reaches the child too
                break
            tail = handle.log_tail(3)
            print(f"{handle.name} exited with status {status}: {tail}", file=sys.stderr)
            return status or 1
        return 0


def run_in_foreground(serve: Callable[[Callable[[], bool]], int]) -> int:
    """`serve(should_stop)` with SIGINT and SIGTERM turned into stop requests while it runs
    (see the module docstring); a stop during start-up (`StopRequested`) returns 0. After a
    SIGTERM the previous SIGTERM handler runs once `serve` has returned."""
    with _StopSignals() as stop:
        try:
            status = serve(stop.requested)
        except StopRequested:  # during start-up; `start` has stopped the child
            status = 0
    if stop.received == signal.SIGTERM:
        signal.raise_signal(signal.SIGTERM)
    return status


# --------------------------------------------------------------------------------------------


class _PortTaken(Exception):
    """The service exited at start because its port was taken."""


class _StopSignals:
    """While entered, SIGINT and SIGTERM only record that a stop was asked for.

    Python's defaults are the reason: SIGINT raises KeyboardInterrupt at whatever line runs,
    for instance between `Popen` returning and its handle entering a `with`, and SIGTERM ends
    the process without any cleanup; both leave the child running. Recorded instead, the stop
    is carried out where the code checks `requested()`. Only the main thread can set signal
    handlers; elsewhere this does nothing (signals interrupt only the main thread).

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


def _bindable_port(host: str, port: int, what: str) -> int:
    """`port` (for 0: a free one) once a socket could bind it on `host`; one-line ConfigError
    if not (the port is taken, or `host` is no address of this machine)."""
    address = bind_host(host)
    with socket.socket(family(address), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot bind {what} to {host}:{port} ({exc.strerror}); pick another "
                "--port (or 0 for any free one), or a --host of this machine"
            ) from None
        return int(sock.getsockname()[1])


def _url(host: str, port: int) -> str:
    if host in _WILDCARDS:
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


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
    handle: ServerHandle, timeout_s: float, should_stop: Callable[[], bool]
) -> None:
    """Return once the service's `ready_path` answers 200; `StopRequested` once
    `should_stop()`; `_PortTaken` when it exited because its port was taken."""
    # Straight to the address, never through an http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if should_stop():
            raise StopRequested
        status = handle.process.poll()
        if status is not None:
            if handle.port_taken(status):
                raise _PortTaken
            tail = handle.log_tail()
            last = tail.splitlines()[-1] if tail else "no output"
            raise RuntimeError(f"{handle.name} exited with status {status} at start: {last}")
        try:
            with opener.open(handle.url + handle.ready_path, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(POLL_S)
    raise TimeoutError(
        f"{handle.name} on {handle.url} did not answer within {timeout_s:.0f} s: "
        f"{handle.log_tail(1)}"
    )
