"""`download_cs224n` against a real HTTP server on 127.0.0.1 (the internet is not needed).

.venv/bin/python -m pytest tests/trainables/test_download.py -q
"""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainables.errors import ConfigError
from trainables.minbert.download import (
    BASE_URL,
    CS224N_COMMIT,
    CS224N_FILES,
    DownloadError,
    download_cs224n,
    git_blob_sha1,
)

REAL_DIR = Path("/work/shared/data/cs224n")


def cs224n_dir() -> Path | None:
    """The real CS224N files when this machine has them (never copied into the repo)."""
    return REAL_DIR if (REAL_DIR / "sts-dev.csv").is_file() else None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(folder being served, its base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/data/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _serve(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    (root / "data").mkdir(exist_ok=True)
    for name, content in files.items():
        (root / "data" / name).write_bytes(content)
    return {name: git_blob_sha1(content) for name, content in files.items()}


SMALL = {
    "ids-sst-dev.csv": b"\tid\tsentence\tsentiment\n0\tabc\t a fine film .\t3\n",
    "sts-dev.csv": b"\tid\tsentence1\tsentence2\tsimilarity\n1\tdef\tA man.\tA guy.\t5.0\n",
}


def test_git_blob_sha1_is_gits_hash() -> None:
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(b"hello world\n") == "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"
    assert CS224N_COMMIT in BASE_URL and BASE_URL.startswith("https://raw.githubusercontent")
    assert issubclass(DownloadError, ConfigError)


def test_downloads_verifies_and_is_idempotent(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    expected = _serve(root, SMALL)
    dest = tmp_path / "dest"
    paths = download_cs224n(dest, base_url=url, timeout=5, expected=expected)
    assert paths == [dest / name for name in SMALL]
    for name, content in SMALL.items():
        assert (dest / name).read_bytes() == content
    # Second run: files already present and verified, nothing fetched (server folder gone).
    shutil.rmtree(root / "data")
    assert download_cs224n(dest, base_url=url, timeout=5, expected=expected) == paths
    assert sorted(p.name for p in dest.iterdir()) == sorted(SMALL)  # no temp files


@pytest.mark.skipif(cs224n_dir() is None, reason="CS224N data folder not present")
def test_real_files_match_the_official_blob_ids(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    real = cs224n_dir()
    assert real is not None
    names = ["ids-sst-dev.csv", "sts-dev.csv", "sts-test-student.csv"]
    (root / "data").mkdir()
    for name in names:
        shutil.copyfile(real / name, root / "data" / name)
    table = {name: CS224N_FILES[name] for name in names}
    paths = download_cs224n(tmp_path / "dest", base_url=url, timeout=5, expected=table)
    assert [p.read_bytes() for p in paths] == [(real / n).read_bytes() for n in names]


def test_checksum_mismatch_writes_nothing(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    expected = _serve(root, SMALL)
    (root / "data" / "sts-dev.csv").write_bytes(SMALL["sts-dev.csv"].replace(b"5.0", b"4.0"))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as info:
        download_cs224n(dest, base_url=url, timeout=5, expected=expected)
    message = str(info.value)
    assert message.startswith(
        f"sts-dev.csv: checksum mismatch, expected blob {expected['sts-dev.csv']} got "
    )
    assert "nothing was written" in message
    assert not dest.exists()  # the good first file was not written either


def test_missing_file_is_a_clear_error(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    expected = _serve(root, SMALL)
    expected["quora-dev.csv"] = "0" * 40
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=r"quora-dev\.csv: HTTP 404 .*copy the files by hand"):
        download_cs224n(dest, base_url=url, timeout=5, expected=expected)
    assert not dest.exists()


def test_unreachable_host_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as info:
        download_cs224n(
            dest,
            base_url=f"http://127.0.0.1:{port}/data/",
            timeout=5,
            expected={"sts-dev.csv": "0" * 40},
        )
    message = str(info.value)
    assert message.startswith(f"could not reach 127.0.0.1:{port}: ")
    assert message.endswith(f"copy the files by hand into {dest} (see docs/DATA.md)")
    assert "\n" not in message and not dest.exists()


def test_existing_different_file_is_never_overwritten(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = served
    expected = _serve(root, SMALL)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sts-dev.csv").write_bytes(b"my own edits\n")
    with pytest.raises(DownloadError, match="exists with other content"):
        download_cs224n(dest, base_url=url, timeout=5, expected=expected)
    assert (dest / "sts-dev.csv").read_bytes() == b"my own edits\n"
    assert sorted(p.name for p in dest.iterdir()) == ["sts-dev.csv"]


def test_only_http_urls(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="not http"):
        download_cs224n(tmp_path, base_url="file:///etc/", expected={"passwd": "0" * 40})
