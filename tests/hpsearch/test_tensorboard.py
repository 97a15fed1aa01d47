"""start_tensorboard / serve_forever: a real TensorBoard on 127.0.0.1 serving real event files.

Every wait is sized for a loaded 2-core machine (`WAIT_S`), and every process a test starts is
killed in a teardown whatever happens: a `with` block for in-process TensorBoards, the whole
process group (serve_forever and the TensorBoard it started) for the serve_forever children.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import hpsearch.tensorboard as tensorboard_module
from hpsearch.tensorboard import TensorBoardHandle, serve_forever, start_tensorboard
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120.0  # TensorBoard starts in ~2 s on a quiet machine; far longer on a loaded one
# A killed parent's TensorBoard is gone within milliseconds (the kernel sends SIGKILL); the
# margin is for a loaded machine.
KILLED_PARENT_WAIT_S = 10.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str) -> object:
    with _OPENER.open(url, timeout=WAIT_S) as resp:
        return json.load(resp)


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path / "experiment"
    for run, scale in (("trial_a", 1.0), ("trial_b", 2.0)):
        writer = SummaryWriter(str(root / run))
        for step in range(4):
            writer.add_scalar("dev/overall", scale / (step + 1), step)
        writer.close()
    return root


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as fh:
            next(fh)
            for row in fh:
                local, state = row.split()[1], row.split()[3]
                addr, hex_port = local.split(":")
                if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                    found.add(addr)
    return found


def _wait_for_runs(url: str, expected: set[str], timeout_s: float = WAIT_S) -> list[str]:
    deadline = time.monotonic() + timeout_s
    runs: list[str] = []
    while time.monotonic() < deadline:
        runs = _get_json(url + "data/runs")  # type: ignore[assignment]
        if expected <= set(runs):
            break
        time.sleep(0.2)
    return runs


def test_serves_runs_and_scalars_on_loopback(logdir: Path) -> None:
    with start_tensorboard(logdir, reload_interval_s=1, timeout_s=WAIT_S) as tb:
        assert tb.running
        assert tb.url == f"http://127.0.0.1:{tb.port}/" and tb.port > 0
        args = tb.args
        assert args[args.index("--host") + 1] == "127.0.0.1"
        assert args[args.index("--logdir") + 1] == str(logdir.resolve())
        if os.path.exists("/proc/net/tcp"):
            assert _listening_addresses(tb.port) == {"0100007F"}  # 127.0.0.1 only

        assert {"trial_a", "trial_b"} <= set(_wait_for_runs(tb.url, {"trial_a", "trial_b"}))
        query = urllib.parse.urlencode({"run": "trial_b", "tag": "dev/overall"})
        points = _get_json(tb.url + "data/plugin/scalars/scalars?" + query)
        assert [step for _, step, _ in points] == [0, 1, 2, 3]  # type: ignore[misc]
        assert [v for _, _, v in points] == pytest.approx([2.0, 1.0, 2 / 3, 0.5])  # type: ignore[misc]

    assert not tb.running
    with pytest.raises(OSError):
        _OPENER.open(tb.url + "data/runs", timeout=2)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_refuses_non_loopback_without_allow_remote(logdir: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address") as info:
        start_tensorboard(logdir, host=host)
    assert "--allow-remote" in str(info.value) and "ssh -L" in str(info.value)


def test_refuses_missing_or_file_logdir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        start_tensorboard(tmp_path / "missing")
    a_file = tmp_path / "events.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        start_tensorboard(a_file)


def test_refuses_bad_or_busy_port(logdir: Path) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        start_tensorboard(logdir, port=70000)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            start_tensorboard(logdir, port=port)


@pytest.mark.parametrize("port", [0, 6123])
def test_refuses_a_host_that_is_no_address_of_this_machine(logdir: Path, port: int) -> None:
    # 203.0.113.7 (TEST-NET-3) is never an address of this machine: one line, even for port 0
    with pytest.raises(ConfigError, match="a --host of this machine") as info:
        start_tensorboard(logdir, host="203.0.113.7", port=port, allow_remote=True)
    assert "\n" not in str(info.value)


# -- serve_forever in a child process ----------------------------------------------------


class _ServeForeverChild:
    """`serve_forever(logdir, port=0)` (or `command`) in a child process that leads its own
    process group."""

    def __init__(self, logdir: Path, tmp_path: Path, command: list[str] | None = None) -> None:
        script = (
            "import sys; from hpsearch.tensorboard import serve_forever; "
            f"sys.exit(serve_forever({str(logdir)!r}, port=0, start_timeout_s={WAIT_S}))"
        )
        self.stderr_path = tmp_path / "serve_forever.stderr"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                command or [sys.executable, "-c", script],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,  # its TensorBoard joins this group: one killpg ends all
            )
        self._lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def read_line(self) -> str:
        """The next line it prints; fails (with its stderr) after `WAIT_S` without one."""
        try:
            return self._lines.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"serve_forever printed nothing within {WAIT_S:.0f} s: {self.stderr()}")

    def group_members(self) -> list[str]:
        """Live (not zombie) processes left in its process group, as `ps` lines."""
        listing = subprocess.run(
            ["ps", "-A", "-o", "pid=,pgid=,stat=,args="], capture_output=True, text=True
        ).stdout
        return [
            row.strip()
            for row in listing.splitlines()
            if len(row.split()) >= 3
            and row.split()[1] == str(self.proc.pid)
            and not row.split()[2].startswith("Z")
        ]

    def wait_for_empty_group(self) -> list[str]:
        """Wait up to `WAIT_S` for its process group to empty; what is still there."""
        deadline = time.monotonic() + WAIT_S
        while (left := self.group_members()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def serve_forever_child(logdir: Path, tmp_path: Path) -> Iterator[_ServeForeverChild]:
    child = _ServeForeverChild(logdir, tmp_path)
    try:
        yield child
    finally:
        child.kill_group()  # whatever happened: the child and every TensorBoard it started


def _url_once_serving(child: _ServeForeverChild) -> str:
    first = child.read_line()
    assert "at http://127.0.0.1:" in first, first + child.stderr()
    url = first.split(" at ", 1)[1].split()[0]
    assert isinstance(_get_json(url + "data/runs"), list)
    assert "ssh -L" in child.read_line()
    return url


def test_serve_forever_prints_address_and_stops_on_ctrl_c(
    serve_forever_child: _ServeForeverChild,
) -> None:
    url = _url_once_serving(serve_forever_child)
    serve_forever_child.proc.send_signal(signal.SIGINT)
    assert serve_forever_child.proc.wait(timeout=WAIT_S) == 0, serve_forever_child.stderr()
    assert serve_forever_child.wait_for_empty_group() == []  # its TensorBoard is gone too
    with pytest.raises(OSError):
        _OPENER.open(url + "data/runs", timeout=2)


def test_serve_forever_stops_tensorboard_on_sigterm(
    serve_forever_child: _ServeForeverChild,
) -> None:
    url = _url_once_serving(serve_forever_child)
    serve_forever_child.proc.send_signal(signal.SIGTERM)
    # TensorBoard is stopped first; then the process still ends as a SIGTERM ends it.
    returncode = serve_forever_child.proc.wait(timeout=WAIT_S)
    assert returncode == -signal.SIGTERM, serve_forever_child.stderr()
    assert serve_forever_child.wait_for_empty_group() == []
    with pytest.raises(OSError):
        _OPENER.open(url + "data/runs", timeout=2)


def test_serve_forever_stops_tensorboard_on_ctrl_c_right_after_launch(
    logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between TensorBoard's Popen returning and anything taking charge of it."""
    launched: list[TensorBoardHandle] = []
    real_launch = tensorboard_module._launch

    def launch_then_ctrl_c(*args: object) -> TensorBoardHandle:
        handle = real_launch(*args)  # type: ignore[arg-type]
        launched.append(handle)
        signal.raise_signal(signal.SIGINT)  # under Python's default: KeyboardInterrupt here
        return handle

    monkeypatch.setattr(tensorboard_module, "_launch", launch_then_ctrl_c)
    try:
        out = io.StringIO()
        assert serve_forever(logdir, port=0, out=out, start_timeout_s=WAIT_S) == 0
        assert len(launched) == 1 and not launched[0].running
        assert out.getvalue() == ""  # stopped before it ever served
    finally:
        for handle in launched:
            handle.stop()


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_tensorboard_does_not_outlive_a_killed_hpsearch_tensorboard(
    logdir: Path, tmp_path: Path
) -> None:
    """SIGKILL of `hpsearch tensorboard` itself (no handler runs): its TensorBoard goes too."""
    command = [sys.executable, "-m", "hpsearch.cli", "tensorboard", str(logdir), "--port", "0"]
    child = _ServeForeverChild(logdir, tmp_path, command)
    try:
        url = _url_once_serving(child)
        boards = [
            int(row.split()[0])
            for row in child.group_members()
            if "tensorboard.main" in row and int(row.split()[0]) != child.proc.pid
        ]
        assert len(boards) == 1, child.group_members()
        child.proc.send_signal(signal.SIGKILL)
        assert child.proc.wait(timeout=WAIT_S) == -signal.SIGKILL
        deadline = time.monotonic() + KILLED_PARENT_WAIT_S
        while _alive(boards[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(boards[0]), f"TensorBoard outlived its parent: {child.group_members()}"
        assert child.wait_for_empty_group() == []  # its data server too
        with pytest.raises(OSError):
            _OPENER.open(url + "data/runs", timeout=2)
    finally:
        child.kill_group()
