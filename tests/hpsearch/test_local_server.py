"""hpsearch.local_server, the child-process service code TensorBoard and the dashboard share,
on a real child: Python's own `http.server` on 127.0.0.1 (and a child that exits at start).

Waits are sized for a loaded 2-core machine; every child is stopped in a `finally` or a
`with`, and each test checks it is gone.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from hpsearch import local_server
from hpsearch.local_server import ServerHandle, StopRequested
from trainables.errors import ConfigError

WAIT_S = 60.0  # http.server answers in well under a second on a quiet machine
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Http(ServerHandle):
    name = "the file server"
    ready_path = ""


def _http_on(folder: Path, host: str = "127.0.0.1") -> Callable[[int], _Http]:
    """A `launch_on(port)` for `python -m http.server` serving `folder` on `host`."""

    def launch_on(port: int) -> _Http:
        cmd = [sys.executable, "-m", "http.server", "--bind", host, "-d", str(folder), str(port)]
        process, log = local_server.launch(cmd, log_prefix="hpsearch-test-http-")
        return _Http(process, args=cmd, host=host, port=port, log_path=log)

    return launch_on


def test_start_returns_once_the_service_answers_and_stop_ends_it(tmp_path: Path) -> None:
    (tmp_path / "page.txt").write_text("served")
    handle = local_server.start(
        _http_on(tmp_path), "127.0.0.1", 0, what="the file server", timeout_s=WAIT_S,
        should_stop=lambda: False,
    )  # fmt: skip
    try:
        assert handle.running and handle.url == f"http://127.0.0.1:{handle.port}/"
        with _OPENER.open(handle.url + "page.txt", timeout=WAIT_S) as resp:
            assert resp.read() == b"served"
    finally:
        handle.stop()
    assert not handle.running
    assert not handle._log_path.exists()  # the log file goes with the process
    handle.stop()  # idempotent


def test_a_child_that_exits_at_start_is_a_runtime_error_with_its_last_line(
    tmp_path: Path,
) -> None:
    def launch_on(port: int) -> _Http:
        cmd = [sys.executable, "-c", "import sys; print('no such logdir'); sys.exit(4)"]
        process, log = local_server.launch(cmd, log_prefix="hpsearch-test-exit-")
        return _Http(process, args=cmd, host="127.0.0.1", port=port, log_path=log)

    with pytest.raises(RuntimeError, match="exited with status 4 at start: no such logdir"):
        local_server.start(
            launch_on, "127.0.0.1", 0, what="x", timeout_s=WAIT_S, should_stop=lambda: False
        )


def test_a_stop_request_during_start_up_stops_the_child(tmp_path: Path) -> None:
    launched: list[_Http] = []
    launch = _http_on(tmp_path)

    def launch_on(port: int) -> _Http:
        launched.append(launch(port))
        return launched[-1]

    with pytest.raises(StopRequested):
        local_server.start(
            launch_on, "127.0.0.1", 0, what="x", timeout_s=WAIT_S, should_stop=lambda: True
        )
    assert len(launched) == 1 and not launched[0].running


def test_a_taken_port_is_a_one_line_config_error_and_launches_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        def launch_on(port: int) -> _Http:
            raise AssertionError("nothing may start on a taken port")

        with pytest.raises(
            ConfigError, match=f"cannot bind the thing to 127.0.0.1:{port}"
        ) as info:
            local_server.start(
                launch_on, "127.0.0.1", port, what="the thing", timeout_s=WAIT_S,
                should_stop=lambda: False,
            )  # fmt: skip
    assert "\n" not in str(info.value) and "--port" in str(info.value)


def test_serving_returns_the_childs_status_when_it_stops_by_itself(tmp_path: Path) -> None:
    handle = local_server.start(
        _http_on(tmp_path), "127.0.0.1", 0, what="x", timeout_s=WAIT_S, should_stop=lambda: False
    )
    out = io.StringIO()
    handle.process.kill()  # the service dies under us
    status = local_server.serve_until_stopped(handle, "serving", lambda: False, out)
    assert status == -signal.SIGKILL
    assert out.getvalue().splitlines()[0] == "serving"
    assert "ssh -L" in out.getvalue()  # loopback: how to reach it from elsewhere
    assert not handle.running


def test_serving_stops_the_child_on_request_and_returns_zero(tmp_path: Path) -> None:
    handle = local_server.start(
        _http_on(tmp_path), "127.0.0.1", 0, what="x", timeout_s=WAIT_S, should_stop=lambda: False
    )
    asked = iter([False, False, True])
    assert (
        local_server.serve_until_stopped(handle, "b", lambda: next(asked, True), io.StringIO())
        == 0
    )
    assert not handle.running


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "[::1]", "127.0.0.2"])
def test_loopback_hosts_pass_without_allow_remote(host: str) -> None:
    local_server.check_host(host, False, what="TensorBoard", reads="every run", port=6006)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.org"])
def test_other_hosts_need_allow_remote_and_say_how_to_tunnel(host: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address") as info:
        local_server.check_host(host, False, what="TensorBoard", reads="every run", port=6006)
    message = str(info.value)
    assert "\n" not in message and "ssh -L 6006:127.0.0.1:6006" in message
    assert "--allow-remote" in message
    local_server.check_host(host, True, what="TensorBoard", reads="every run", port=6006)


def test_ports_out_of_range_are_refused() -> None:
    for port in (-1, 65536):
        with pytest.raises(ConfigError, match="out of range"):
            local_server.check_port(port, "TensorBoard")
    local_server.check_port(0, "TensorBoard")


def test_no_child_is_left_behind() -> None:
    """The tests above stopped every child they started (run last in this module)."""
    rows = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "http.server" not in rows, rows
