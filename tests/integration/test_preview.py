"""`herald preview`: the gallery renders in a real headless Chromium (Debian's package)."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from service.app import load
from service.tools.preview import render_all, write_gallery
from tests.conftest import EXAMPLES, project_settings

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("chromium is not installed: run `make system-deps`")


@pytest.mark.timeout(600)
def test_every_gallery_page_renders_a_non_blank_email(tmp_path: Path) -> None:
    """Each page loads from file:// with no server and its desktop and mobile renderings of
    the mail are not blank; each page holds both frames."""
    loaded = load(project_settings())
    pages = render_all(loaded, EXAMPLES)
    expected = {
        (t, loc)
        for spec in loaded.table.routes.values()
        for r in spec
        for t in [r.spec.template]
        for loc in loaded.renderer.locales
    }
    assert expected == {(p.notification.template, p.locale) for p in pages}
    index = write_gallery(pages, tmp_path / "gallery")
    assert all(p.file in index.read_text() for p in pages)
    assert all(2 == (tmp_path / "gallery" / p.file).read_text().count("<iframe") for p in pages)
    chromium = _chromium()

    def shoot(page_file: str) -> tuple[str, subprocess.CompletedProcess[str], Path]:
        shot = tmp_path / f"{page_file}.png"
        run = subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={tmp_path / ('profile-' + page_file)}",
                "--window-size=1400,1400",
                f"--screenshot={shot}",
                (tmp_path / "gallery" / page_file).as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return page_file, run, shot

    with ThreadPoolExecutor(max_workers=3) as pool:  # one browser per page, a few at a time
        results = list(pool.map(shoot, [p.file for p in pages]))
    for page_file, run, shot in results:
        assert 0 == run.returncode, run.stderr[-2000:]
        image = Image.open(shot).convert("L")
        # The frames sit below the header table: look at where each rendering is drawn.
        desktop = image.crop((24, 420, 664, 1400))
        mobile = image.crop((700, 420, 1075, 1400))
        for name, area in (("desktop", desktop), ("mobile", mobile)):
            colours = len(area.getcolors(maxcolors=65536) or [])
            assert colours > 20, f"{page_file}: the {name} rendering looks blank ({colours} tones)"
            assert ImageStat.Stat(area).stddev[0] > 5, f"{page_file}: {name} rendering is flat"
