"""optuna-dashboard on an experiment's Optuna study, on 127.0.0.1 unless told otherwise.

    hpsearch dashboard results/EXPERIMENT [--port 8080]
    # on a cluster head, seen from your laptop:
    ssh -L 8080:127.0.0.1:8080 ubuntu@HEAD   then open http://127.0.0.1:8080/

The dashboard shows the study the sweep's searcher writes (`optuna.journal`, opened through
`hpsearch.experiment.journal_storage`, the one constructor of it): every trial with its state,
parameters, final values and intermediate values, live while the sweep runs.

It is read-only. optuna-dashboard can also create, rename and delete studies, tell trials and
write notes; in an experiment folder each of those would change or lose what the sweep, its
`hpsearch resume` and its report read from the journal. Every request other than GET and HEAD
is therefore answered 405 before optuna-dashboard sees it (all of its writes are POST, PUT or
DELETE).

Like `hpsearch tensorboard` (whose process-handling helpers this module shares): it has no
login, so it binds a loopback address, and anything else needs `allow_remote=True`
(`--allow-remote`) and prints a warning; the server runs as a child process, `python -m
hpsearch.dashboard EXP_DIR HOST PORT` (an argument list, no shell), which serves
optuna-dashboard's WSGI app (`optuna_dashboard.wsgi`) from a threaded wsgiref server (what the
`optuna-dashboard` command itself uses). `start_dashboard` returns once its HTTP API answers.
`serve_forever` owns that child whatever happens: SIGINT and SIGTERM only request a stop,
carried out within a fraction of a second (SIGTERM, then SIGKILL after STOP_TIMEOUT_S); a
SIGTERM is passed on to the previous handler afterwards. On Linux the child also gets SIGKILL
from the kernel when its parent dies (prctl PR_SET_PDEATHSIG).

    with start_dashboard(Path("results/demo")) as board:   # port 0: any free port
        print(board.url)
"""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from hpsearch.tensorboard import (
    _die_with_parent,
    _family,
    _is_loopback,
    _never,
    _StopSignals,
    _url,
)
from trainables.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from hpsearch.experiment import Experiment

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DashboardHandle",
    "read_only",
    "serve_forever",
    "start_dashboard",
]

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked: optuna-dashboard has no authentication
DEFAULT_PORT = 8080  # optuna-dashboard's own default
START_TIMEOUT_S = 60.0  # how long the server may take to answer (a loaded machine)
STOP_TIMEOUT_S = 3.0  # how long it may take to exit on SIGTERM before it gets SIGKILL
INSTALL_HINT = "pip install 'hpsearch[dashboard]' (or pip install optuna-dashboard)"
_PORT_TAKEN_EXIT = 3  # the child's exit status when its port is taken
_POLL_S = 0.2  # how often the waits look for a stop request or a server that exited
_READ_METHODS = ("GET", "HEAD")


class DashboardHandle:
    """A running optuna-dashboard child process; a context manager that stops it on exit.

    Attributes:
        url: Where it answers, e.g. `http://127.0.0.1:8080/` (for a wildcard bind, the
            loopback address of this machine).
        host: The address it is bound to.
        port: Its port.
        experiment: The experiment folder whose study it serves.
        study_name: The study's name in the folder's journal.
        process: The `subprocess.Popen` of the server.
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
        experiment: Path,
        study_name: str,
        log_path: Path,
    ) -> None:
        self.process = process
        self.args = args
        self.url = url
        self.host = host
        self.port = port
        self.experiment = experiment
        self.study_name = study_name
        self._log_path = log_path

    @property
    def running(self) -> bool:
        """Whether the server process has not exited yet."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the server wrote to stdout/stderr."""
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout` seconds); idempotent, and
        SIGKILL is sent even if the wait is interrupted."""
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

    def __enter__(self) -> DashboardHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_dashboard(
    exp_dir: Path | str,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    allow_remote: bool = False,
    timeout_s: float = START_TIMEOUT_S,
) -> DashboardHandle:
    """Start optuna-dashboard on the study of `exp_dir` and wait until its HTTP API answers.

    Args:
        exp_dir: An experiment folder a sweep wrote (experiment.json and optuna.journal).
        host: Address to bind. Loopback (127.0.0.1, ::1, localhost) unless `allow_remote`.
        port: Port to bind; 0 picks a free one.
        allow_remote: Permit a non-loopback `host` (optuna-dashboard has no authentication).
        timeout_s: How long to wait for `/api/meta` to answer.

    Returns:
        The handle; `handle.url` is where it answers.

    Raises:
        ConfigError: `exp_dir` is not an experiment folder or holds no study yet,
            optuna-dashboard is not installed, `host` is not loopback without `allow_remote`,
            or `port` is out of range or already taken.
        RuntimeError: The server exited before answering.
        TimeoutError: It did not answer within `timeout_s`.
    """
    return _start(exp_dir, host, port, allow_remote, timeout_s, should_stop=_never)


def serve_forever(
    exp_dir: Path | str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
    out: TextIO | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> int:
    """Run optuna-dashboard in the foreground until Ctrl-C or SIGTERM (`hpsearch dashboard`).

    The server is stopped before this returns, whenever the signal comes; after a SIGTERM
    the previous SIGTERM handler runs once it is stopped (by default: the process ends).

    Returns:
        0 after Ctrl-C; the server's exit status (or 1) if it stopped by itself.
    """
    out = out or sys.stdout
    with _StopSignals() as stop:
        try:
            status = _serve(
                exp_dir, host, port, allow_remote, out, start_timeout_s, stop.requested
            )
        except _StopRequested:  # during start-up; `_start` has stopped the server
            status = 0
    if stop.received == signal.SIGTERM:
        signal.raise_signal(signal.SIGTERM)
    return status


def read_only(app: WSGIApplication) -> WSGIApplication:
    """`app` answering only GET and HEAD: anything else gets 405 and a JSON `reason` (the
    field optuna-dashboard's page shows), so the experiment's study is never changed."""
    body = (
        b'{"reason": "hpsearch dashboard is read-only: the study belongs to the sweep '
        b'(its resume and its report read it)"}'
    )

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() in _READ_METHODS:
            return app(environ, start_response)
        start_response(
            "405 Method Not Allowed",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Allow", ", ".join(_READ_METHODS)),
            ],
        )
        return [body]

    return guarded


# --------------------------------------------------------------------------------------------


class _StopRequested(Exception):
    """A stop signal came while the server was starting."""


class _PortTaken(Exception):
    """The server exited at start because its port was taken."""


def _experiment_with_study(exp_dir: Path | str) -> Experiment:
    """The experiment in `exp_dir`, once its journal holds its study (ConfigError if not)."""
    # Imported here: `hpsearch --help` imports this module, and experiment pulls in pydantic.
    from hpsearch.experiment import JOURNAL, Experiment, journal_storage

    folder = Path(exp_dir).expanduser()
    if not folder.exists():
        raise ConfigError(
            f"experiment folder {folder} does not exist: pass the folder a sweep wrote"
        )
    experiment = Experiment.load(folder)
    journal = experiment.journal
    if not journal.is_file():  # never let the storage create an empty journal here
        raise ConfigError(
            f"{experiment.path} has no Optuna study yet (no {JOURNAL}): its sweep has not "
            "started a trial; open the dashboard once one has"
        )
    try:
        journal_storage(journal).get_study_id_from_name(experiment.study_name)
    except KeyError:
        raise ConfigError(
            f"{journal} holds no study named {experiment.study_name!r} (the name "
            "experiment.json records): its sweep has not started a trial yet"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{journal} is unreadable ({exc}): it is not an Optuna journal"
        ) from None
    return experiment


def _check_host(host: str, allow_remote: bool) -> None:
    if not host:
        raise ConfigError("dashboard host is empty; use 127.0.0.1")
    if _is_loopback(host) or allow_remote:
        return
    raise ConfigError(
        f"dashboard host {host!r} is not a loopback address, and optuna-dashboard has no "
        "login: anyone who reaches the port reads the study; keep 127.0.0.1 and forward the "
        "port (ssh -L 8080:127.0.0.1:8080 USER@HOST), or pass --allow-remote on a network "
        "you trust"
    )


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")


def _bindable_port(host: str, port: int) -> int:
    """`port` (or, for 0, a free one) once a socket could bind it on `host`; ConfigError if
    not (taken, or `host` is no address of this machine)."""
    with socket.socket(_family(_bind_host(host)), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_bind_host(host), port))
        except OSError as exc:
            raise ConfigError(
                f"cannot bind the dashboard to {host}:{port} ({exc.strerror}); pick another "
                "--port (or 0 for any free one), or a --host of this machine"
            ) from None
        return int(sock.getsockname()[1])


def _start(
    exp_dir: Path | str,
    host: str,
    port: int,
    allow_remote: bool,
    timeout_s: float,
    *,
    should_stop: Callable[[], bool],
) -> DashboardHandle:
    """`start_dashboard`, giving up with `_StopRequested` as soon as `should_stop()`."""
    _check_host(host, allow_remote)
    if not 0 <= port <= 65535:
        raise ConfigError(f"dashboard port {port} is out of range; use 1-65535, or 0 for any")
    experiment = _experiment_with_study(exp_dir)
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise ConfigError(f"optuna-dashboard is not installed; run `{INSTALL_HINT}`")

    attempts = 3 if port == 0 else 1  # a picked port can be taken before the server binds it
    for attempt in range(attempts):
        chosen = _bindable_port(host, port)
        handle = _launch(experiment, host, chosen)
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


def _serve(
    exp_dir: Path | str,
    host: str,
    port: int,
    allow_remote: bool,
    out: TextIO,
    start_timeout_s: float,
    should_stop: Callable[[], bool],
) -> int:
    """Start the server, print where it answers, and wait for it to exit or `should_stop()`."""
    with _start(exp_dir, host, port, allow_remote, start_timeout_s, should_stop=should_stop) as d:
        print(
            f"optuna-dashboard on study {d.study_name!r} of {d.experiment} at {d.url}  "
            "(read-only; Ctrl-C to stop)",
            file=out,
        )
        if _is_loopback(host):
            print(
                f"from another machine: ssh -L {d.port}:127.0.0.1:{d.port} USER@THIS_HOST, "
                f"then open http://127.0.0.1:{d.port}/",
                file=out,
            )
        else:
            print(
                f"warning: the dashboard listens on {host}:{d.port} with no login: anyone "
                "who reaches that port reads this study",
                file=sys.stderr,
            )
        out.flush()
        while not should_stop():
            try:
                status = d.process.wait(timeout=_POLL_S)
            except subprocess.TimeoutExpired:
                continue
            if should_stop():  # Ctrl-C in a terminal reaches the server too
                break
            print(f"the dashboard exited with status {status}: {d.log_tail(3)}", file=sys.stderr)
            return status or 1
        return 0


def _launch(experiment: Experiment, host: str, port: int) -> DashboardHandle:
    fd, log_name = tempfile.mkstemp(prefix="hpsearch-dashboard-", suffix=".log")
    cmd = [sys.executable, "-m", "hpsearch.dashboard", str(experiment.path), host, str(port)]
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
    return DashboardHandle(
        process, args=cmd, url=_url(host, port), host=host, port=port,
        experiment=experiment.path, study_name=experiment.study_name, log_path=Path(log_name),
    )  # fmt: skip


def _wait_until_ready(
    board: DashboardHandle, timeout_s: float, should_stop: Callable[[], bool]
) -> None:
    """Return once the server's HTTP API answers; `_StopRequested` once `should_stop()`."""
    # Straight to the address, never through an http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if should_stop():
            raise _StopRequested
        status = board.process.poll()
        if status == _PORT_TAKEN_EXIT:
            raise _PortTaken
        if status is not None:
            tail = board.log_tail()
            last = tail.splitlines()[-1] if tail else "no output"
            raise RuntimeError(f"the dashboard exited with status {status} at start: {last}")
        try:
            with opener.open(board.url + "api/meta", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(_POLL_S)
    raise TimeoutError(
        f"the dashboard on {board.url} did not answer within {timeout_s:.0f} s: "
        f"{board.log_tail(1)}"
    )


# -- the child process: python -m hpsearch.dashboard EXP_DIR HOST PORT -----------------------


def _interrupt(signal_number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _make_server(host: str, port: int, app: WSGIApplication) -> Any:
    """A threaded wsgiref server bound to exactly (host, port), logging no request lines."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = _family(_bind_host(host))

        def server_bind(self) -> None:  # HTTPServer's would look the host up in DNS
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = _bind_host(host), int(self.server_address[1])
            self.setup_environ()

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # the page polls every few seconds; errors still reach the log

    server = Server((_bind_host(host), port), QuietHandler)
    server.set_app(app)
    return server


def _child_main(argv: list[str]) -> int:
    """Serve the study of EXP_DIR on HOST:PORT until SIGINT or SIGTERM."""
    exp_dir, host, port = argv[0], argv[1], int(argv[2])
    signal.signal(signal.SIGTERM, _interrupt)
    from optuna_dashboard import wsgi

    from hpsearch.experiment import Experiment

    experiment = Experiment.load(exp_dir)
    app = read_only(wsgi(experiment.storage()))
    try:
        server = _make_server(host, port, app)
    except OSError as exc:
        print(f"cannot bind {host}:{port}: {exc.strerror}", file=sys.stderr)
        return _PORT_TAKEN_EXIT if exc.errno == errno.EADDRINUSE else 1
    try:
        server.serve_forever(poll_interval=_POLL_S)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
