"""The HTML report renders in a real headless browser (Chromium), figures and all.

Chromium is installed by the Makefile/CI (`apt-get install -y chromium`); without it the test
is skipped with the reason.
"""

from __future__ import annotations

import base64
import io
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs /usr/bin/chromium (apt-get install -y chromium)")  # fmt: skip
def test_report_html_renders_in_headless_chromium(paper_report: Path, tmp_path: Path) -> None:
    html = paper_report / "report.html"
    shot = tmp_path / "shot.png"
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1280,2000", html.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert float(pixels.std()) > 0.05, "the page looks blank"
    assert float((pixels.min(axis=2) < 0.95).mean()) > 0.03, "almost nothing drawn on the page"

    parser = _Images()
    parser.feed(html.read_text())
    assert len(parser.srcs) == 4
    for src in parser.srcs:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), f"<img> not a data URI: {src[:60]}"
        image = mpimg.imread(io.BytesIO(base64.b64decode(src[len(prefix) :])), format="png")
        assert image.shape[0] > 100 and float(np.asarray(image).std()) > 0.01
