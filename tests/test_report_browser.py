"""The HTML report in a real headless Chromium: it loads cleanly, offline, every picture decodes, the drift is flagged.

The harness (``tests/browser.py``) is tested first on pages made to pass and made to fail, so its checks can fail.
Set ``PIXELFLOWSOM_SCREENSHOT=/some/file.png`` to keep the report's screenshot for a human to look at.
"""

import base64
import importlib.util
import io
import os
import shutil

import numpy as np
import pytest

from . import browser as browser_module
from .browser import Browser

N_FOVS = 4
DRIFTING = "fov2"


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def png_data_uri():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.imshow(np.arange(64).reshape(8, 8))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def test_missing_browser_skips_or_fails(monkeypatch, tmp_path):
    """Without Chromium the browser tests skip, or fail under PIXELFLOWSOM_REQUIRE_BROWSER=1 (as in CI)."""
    monkeypatch.setattr(browser_module, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("PIXELFLOWSOM_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium"):
        browser_module.require_browser()
    monkeypatch.setenv("PIXELFLOWSOM_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="PIXELFLOWSOM_REQUIRE_BROWSER=1 but no .*no-chromium"):
        browser_module.require_browser()


def test_harness_passes_a_clean_page(browser, tmp_path):
    page_path = tmp_path / "clean.html"
    page_path.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>clean</title></head><body>'
        f'<p id="x">hello</p><img alt="a" src="{png_data_uri()}"></body></html>',
        encoding="utf-8",
    )
    page = browser.open(page_path)
    assert page.errors() == []
    assert page.requests == []
    images = page.images()
    assert len(images) == 1
    assert images[0][1] is True
    assert page.js("return document.getElementById('x').textContent;") == "hello"
    shot = page.screenshot(tmp_path / "clean.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tall = tmp_path / "tall.html"
    tall.write_text('<body style="margin:0"><div style="height:2345px;background:#def"></div></body>')
    from matplotlib.image import imread

    assert imread(browser.open(tall).screenshot(tmp_path / "tall.png")).shape[:2] == (2345, browser_module.WIDTH)


def test_harness_catches_a_broken_page(browser, tmp_path):
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>broken</title></head><body>'
        f'<img alt="good" src="{png_data_uri()}">'
        '<img alt="bad" src="data:image/png;base64,AAAA">'
        '<img alt="remote" src="http://example.invalid/x.png">'
        '<script>console.error("deliberate error x")</script></body></html>',
        encoding="utf-8",
    )
    page = browser.open(page_path)
    decoded = [ok for _, ok in page.images()]
    assert decoded == [True, False, False]
    assert any(level == "SEVERE" and "deliberate error x" in text for level, text in page.errors())
    assert page.requests == ["http://example.invalid/x.png"]


def test_harness_is_isolated_between_pages(browser, tmp_path):
    """What one page logged and requested is not reported for the next."""
    noisy = tmp_path / "noisy.html"
    noisy.write_text('<script>console.error("noise")</script><img src="http://example.invalid/y.png">')
    quiet = tmp_path / "quiet.html"
    quiet.write_text("<p>quiet</p>")
    assert browser.open(noisy).errors() != []
    page = browser.open(quiet)
    assert page.console == []
    assert page.requests == []


def write_cohort(path):
    """A store of ``N_FOVS`` synthetic FOVs ``fov0``, ...; ``DRIFTING`` has every intensity doubled (the drift)."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    from pixelflowsom._synthetic import make_synthetic_image

    images = {}
    for i in range(N_FOVS):
        image, _ = make_synthetic_image((128, 128), n_channels=8, n_phenotypes=4, seed=i, layout_seed=i)
        name = f"fov{i}"
        values = image.values * (2.0 if name == DRIFTING else 1.0)
        images[name] = Image2DModel.parse(
            values, dims=("c", "y", "x"), c_coords=list(image.c.values), chunks={"c": 8, "y": 64, "x": 64}
        )
    sd.SpatialData(images=images).write(path)
    return path


def test_report_in_chromium(browser, tmp_path):
    if importlib.util.find_spec("pixelflowsom._report") is None:
        pytest.skip("pixelflowsom.report is not written yet (no pixelflowsom/_report.py)")
    from pixelflowsom import report
    from pixelflowsom._cli import main

    store = write_cohort(tmp_path / "cohort.zarr")
    names = [f"fov{i}" for i in range(N_FOVS)]
    args = ["cluster", str(store)]
    for name in names:
        args += ["--image", name]
    assert main([*args, "--n-clusters", "4", "--quiet"]) in (None, 0)
    html = report(store, names, out=tmp_path / "report.html")

    page = browser.open(html)
    try:
        assert page.js("return document.title;").startswith("pixelflowsom report")
        assert page.errors() == [], page.console
        assert page.requests == []
        images = page.images()
        assert len(images) >= 5
        assert [src[:40] for src, ok in images if not ok] == []
        assert all(src.startswith("data:image/png;base64,") for src, _ in images)

        rows = page.js(
            "return Array.from(document.querySelectorAll('tr.fov'), (tr) => [tr.dataset.fov, tr.dataset.drift]);"
        )
        assert sorted(fov for fov, _ in rows) == names
        assert dict(rows) == {name: str(name == DRIFTING).lower() for name in names}
        flags = page.js("const p = document.getElementById('drift-flags'); return p === null ? null : p.textContent;")
        assert flags is not None, "no <p id='drift-flags'>"
        assert DRIFTING in flags
        assert not [name for name in names if name != DRIFTING and name in flags], flags
    finally:
        shot = page.screenshot(tmp_path / "report.png")
        if os.environ.get("PIXELFLOWSOM_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["PIXELFLOWSOM_SCREENSHOT"])
    assert shot.stat().st_size > 10_000
