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
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TextIO

from trainables.errors import ConfigError

__all__ = ["TensorBoardHandle", "serve_forever", "start_tensorboard"]

DEFAULT_PORT = 6006
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
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        url: str,
        host: str,
        port: int,
        logdir: Path,
        log_path: Path,
    ) -> None:
        self.process = process
        self.url = url
        self.host = host
        self.port = port
        self.logdir = logdir
        self._log_path = log_path

    @property
    def args(self) -> list[str]:
        """The command line TensorBoard was started with."""
        return [str(a) for a in self.process.args]  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        """The last lines TensorBoard wrote to stdout/stderr."""
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop TensorBoard (SIGTERM, then SIGKILL after `timeout` seconds); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
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
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    timeout_s: float = 20.0,
    reload_interval_s: float = 5.0,
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
        chosen = _free_port(host) if port == 0 else _require_free(host, port)
        handle = _launch(logdir.resolve(), host, chosen, reload_interval_s)
        try:
            _wait_until_ready(handle, timeout_s)
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
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run TensorBoard in the foreground until Ctrl-C (for `hpsearch tensorboard`).

    Args:
        logdir: Folder with event files.
        host: Address to bind (loopback unless `allow_remote`).
        port: Port to bind; 0 picks a free one.
        allow_remote: Permit a non-loopback `host`.
        out: Where to print the address (default stdout).

    Returns:
        0 after Ctrl-C; TensorBoard's exit status (or 1) if it stopped by itself.
    """
    out = out or sys.stdout
    with start_tensorboard(logdir, host, port, allow_remote=allow_remote) as tb:
        print(f"TensorBoard on {tb.logdir} at {tb.url}  (Ctrl-C to stop)", file=out)
        if _is_loopback(host):
            print(
                f"from another machine: ssh -L {tb.port}:127.0.0.1:{tb.port} USER@THIS_HOST, "
                f"then open http://127.0.0.1:{tb.port}/",
                file=out,
            )
        out.flush()
        try:
            status = tb.process.wait()
        except KeyboardInterrupt:
            return 0
        print(f"TensorBoard exited with status {status}: {tb.log_tail(3)}", file=sys.stderr)
        return status or 1


# --------------------------------------------------------------------------------------------


class _PortTaken(Exception):
    pass


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


def _free_port(host: str) -> int:
    bind_host = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    with socket.socket(_family(bind_host), socket.SOCK_STREAM) as sock:
        sock.bind((bind_host, 0))
        return int(sock.getsockname()[1])


def _require_free(host: str, port: int) -> int:
    bind_host = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    with socket.socket(_family(bind_host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot bind TensorBoard to {host}:{port} ({exc.strerror}); pick another "
                "--port (or 0 for any free one)"
            ) from None
    return port


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
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    return TensorBoardHandle(
        process, url=_url(host, port), host=host, port=port, logdir=logdir,
        log_path=Path(log_name),
    )  # fmt: skip


def _wait_until_ready(tb: TensorBoardHandle, timeout_s: float) -> None:
    # Straight to the address, never through an http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
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
        time.sleep(0.2)
    raise TimeoutError(
        f"TensorBoard on {tb.url} did not answer within {timeout_s:.0f} s: {tb.log_tail(1)}"
    )
