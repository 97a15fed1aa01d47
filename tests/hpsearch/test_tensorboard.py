"""start_tensorboard / serve_forever: a real TensorBoard on 127.0.0.1 serving real event files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from hpsearch.tensorboard import start_tensorboard
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str) -> object:
    with _OPENER.open(url, timeout=5) as resp:
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


def _wait_for_runs(url: str, expected: set[str], timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    runs: list[str] = []
    while time.monotonic() < deadline:
        runs = _get_json(url + "data/runs")  # type: ignore[assignment]
        if expected <= set(runs):
            break
        time.sleep(0.2)
    return runs


def test_serves_runs_and_scalars_on_loopback(logdir: Path) -> None:
    with start_tensorboard(logdir, reload_interval_s=1) as tb:
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


def test_serve_forever_prints_address_and_stops_on_ctrl_c(logdir: Path, tmp_path: Path) -> None:
    script = (
        "import sys; from hpsearch.tensorboard import serve_forever; "
        f"sys.exit(serve_forever({str(logdir)!r}, port=0))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert "at http://127.0.0.1:" in first, first + proc.stderr.read()  # type: ignore[union-attr]
        url = first.split(" at ", 1)[1].split()[0]
        assert isinstance(_get_json(url + "data/runs"), list)
        assert "ssh -L" in proc.stdout.readline()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):
        _OPENER.open(url + "data/runs", timeout=2)
