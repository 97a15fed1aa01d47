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

Like `hpsearch tensorboard` (both run on `hpsearch.local_server`): it has no
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
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from hpsearch import local_server
from hpsearch.local_server import ServerHandle, bind_host, check_host, check_port, family
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
INSTALL_HINT = "pip install 'hpsearch[dashboard]' (or pip install optuna-dashboard)"
_PORT_TAKEN_EXIT = 3  # the child's exit status when its port is taken
_READ_METHODS = ("GET", "HEAD")


class DashboardHandle(ServerHandle):
    """A running optuna-dashboard child process; a context manager that stops it on exit.

    Attributes (besides `ServerHandle`'s url, host, port, process, args):
        experiment: The experiment folder whose study it serves.
        study_name: The study's name in the folder's journal.
    """

    name = "the dashboard"
    ready_path = "api/meta"

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        args: list[str],
        host: str,
        port: int,
        experiment: Path,
        study_name: str,
        log_path: Path,
    ) -> None:
        super().__init__(process, args=args, host=host, port=port, log_path=log_path)
        self.experiment = experiment
        self.study_name = study_name

    def port_taken(self, status: int) -> bool:
        return status == _PORT_TAKEN_EXIT  # the child's own exit status says so

    def __enter__(self) -> DashboardHandle:
        return self


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
    return _start(exp_dir, host, port, allow_remote, timeout_s, should_stop=lambda: False)


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
    target = out or sys.stdout

    def serve(should_stop: Callable[[], bool]) -> int:
        board = _start(exp_dir, host, port, allow_remote, start_timeout_s, should_stop=should_stop)
        banner = (
            f"optuna-dashboard on study {board.study_name!r} of {board.experiment} at "
            f"{board.url}  (read-only; Ctrl-C to stop)"
        )
        return local_server.serve_until_stopped(board, banner, should_stop, target)

    return local_server.run_in_foreground(serve)


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


def _start(
    exp_dir: Path | str,
    host: str,
    port: int,
    allow_remote: bool,
    timeout_s: float,
    *,
    should_stop: Callable[[], bool],
) -> DashboardHandle:
    """`start_dashboard`, giving up with `StopRequested` as soon as `should_stop()`."""
    check_host(host, allow_remote, what="optuna-dashboard", reads="the study", port=DEFAULT_PORT)
    check_port(port, "dashboard")
    experiment = _experiment_with_study(exp_dir)
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise ConfigError(f"optuna-dashboard is not installed; run `{INSTALL_HINT}`")
    return local_server.start(
        lambda chosen: _launch(experiment, host, chosen),
        host,
        port,
        what="the dashboard",
        timeout_s=timeout_s,
        should_stop=should_stop,
    )


def _launch(experiment: Experiment, host: str, port: int) -> DashboardHandle:
    cmd = [sys.executable, "-m", "hpsearch.dashboard", str(experiment.path), host, str(port)]
    process, log_path = local_server.launch(cmd, log_prefix="hpsearch-dashboard-")
    return DashboardHandle(
        process, args=cmd, host=host, port=port, experiment=experiment.path,
        study_name=experiment.study_name, log_path=log_path,
    )  # fmt: skip


# -- the child process: python -m hpsearch.dashboard EXP_DIR HOST PORT -----------------------


def _interrupt(signal_number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _make_server(host: str, port: int, app: WSGIApplication) -> Any:
    """A threaded wsgiref server bound to exactly (host, port), logging no request lines."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family(bind_host(host))

        def server_bind(self) -> None:  # HTTPServer's would look the host up in DNS
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = bind_host(host), int(self.server_address[1])
            self.setup_environ()

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # the page polls every few seconds; errors still reach the log

    server = Server((bind_host(host), port), QuietHandler)
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
        server.serve_forever(poll_interval=local_server.POLL_S)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
