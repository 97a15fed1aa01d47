"""Fetch the official CS224N data files and check each one against its git blob id.

    hpsearch data download --dest data/cs224n

All files are downloaded and verified in memory first; only when every one of them matches
are they written (each to a temporary file, then renamed), so a failure leaves nothing behind.
An existing file with the right content is kept; one with other content is never overwritten.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from trainables.atomic import atomic_path
from trainables.errors import ConfigError

CS224N_COMMIT = "7ac8260577fc12a86c7aaf38918056c30054ef39"
BASE_URL = (
    f"https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/"
    f"{CS224N_COMMIT}/data/"
)

# file -> git blob sha1 at CS224N_COMMIT (see /work/shared/data/cs224n/PROVENANCE.md)
CS224N_FILES = {
    "ids-sst-train.csv": "9cb7333cb1dae49c2bd2a4b56a24882a6e8704b5",
    "ids-sst-dev.csv": "3171aa629a340809d2db4a50df8f6e5ec9420ab0",
    "ids-sst-test-student.csv": "bbd2313758825f86e24416d6aad64cd93370cf7a",
    "quora-train.csv": "a3b5546f6a0e65b60a328a5d294d1038f5bed1da",
    "quora-dev.csv": "de7cfa32428fd470b93f778fccc45a619e01336f",
    "quora-test-student.csv": "f257ef00558555afb50819578a58205732b16354",
    "sts-train.csv": "12b17760e7795fee35aeeabc290d5651de02622a",
    "sts-dev.csv": "9392860e584717976b8d817cc40c9e6ceeec27e0",
    "sts-test-student.csv": "25f0cf8fafdd1f82b9e2bb460c708af34341ce60",
}
CFIMDB_FILES = {
    "ids-cfimdb-train.csv": "cd57bcbd2f7214ea6dd1783d3e885d324b1f478d",
    "ids-cfimdb-dev.csv": "8a0f5dcf3d40189b96c801a12cd79bf8003e61de",
    "ids-cfimdb-test-student.csv": "1e789c709b3ca0511f027a309b6d8bd21cde41b2",
}


class DownloadError(ConfigError):
    """The files could not be fetched or verified; nothing was written."""


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file with this content (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def download_cs224n(
    dest: Path,
    base_url: str = BASE_URL,
    timeout: float = 30,
    expected: dict[str, str] | None = None,
    include_cfimdb: bool = False,
) -> list[Path]:
    """Download the CS224N data files into dest and verify them.

    Args:
        dest: target folder, created if needed.
        base_url: folder URL the file names are appended to (http or https).
        timeout: seconds to wait on each connection or read.
        expected: file name -> git blob sha1 to fetch; default CS224N_FILES (plus
            CFIMDB_FILES with include_cfimdb).
        include_cfimdb: also fetch the CFIMDB files (only with the default table).

    Returns:
        The paths of all expected files under dest, existing ones included.

    Raises:
        DownloadError: the host is unreachable, a file is missing there, a checksum differs,
            or dest holds a different file of the same name. Nothing is written then.
    """
    table = (
        dict(expected)
        if expected is not None
        else {**CS224N_FILES, **(CFIMDB_FILES if include_cfimdb else {})}
    )
    dest = Path(dest).expanduser()
    scheme = urllib.parse.urlsplit(base_url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"base URL {base_url} is not http(s): give the raw folder URL")
    if not base_url.endswith("/"):
        base_url += "/"
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder: pick another --dest")

    todo = []
    for name, blob in table.items():
        target = dest / name
        if target.is_file():
            have = git_blob_sha1(target.read_bytes())
            if have != blob:
                raise DownloadError(
                    f"{target} exists with other content (blob {have}, expected {blob}): "
                    "move it away or pick another --dest; nothing was written"
                )
            continue  # already there and verified
        todo.append((name, blob))

    fetched = {}
    for name, blob in todo:
        data = _fetch(base_url + urllib.parse.quote(name), timeout, dest)
        got = git_blob_sha1(data)
        if got != blob:
            raise DownloadError(
                f"{name}: checksum mismatch, expected blob {blob} got {got}; nothing was written"
            )
        fetched[name] = data

    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for name, data in fetched.items():
            _write_new(dest / name, data)
            written.append(dest / name)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise DownloadError(
            f"could not write into {dest}: {exc.strerror or exc}; nothing was kept"
        ) from None
    return [dest / name for name in table]


def _fetch(url: str, timeout: float, dest: Path) -> bytes:
    host = urllib.parse.urlsplit(url).netloc
    request = urllib.request.Request(url, headers={"User-Agent": "hpsearch-data-download"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{url}: HTTP {exc.code} {exc.reason}; check the URL, or copy the "
            f"files by hand into {dest} (see docs/DATA.md)"
        ) from None
    except urllib.error.URLError as exc:
        raise DownloadError(
            f"could not reach {host}: {_reason(exc.reason)}; copy the files by "
            f"hand into {dest} (see docs/DATA.md)"
        ) from None
    except (http.client.HTTPException, OSError) as exc:  # timeouts, resets, cut transfers
        raise DownloadError(
            f"could not reach {host}: {_reason(exc)}; copy the files by hand "
            f"into {dest} (see docs/DATA.md)"
        ) from None


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _write_new(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`trainables.atomic`); a file that appeared at `path`
    meanwhile is kept (FileExistsError): it is checked on the next run."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if path.exists():
            raise FileExistsError(f"{path} appeared while downloading")
