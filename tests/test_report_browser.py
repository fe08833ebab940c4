"""The report renders in a real browser engine: headless Chromium, driven over the DevTools protocol.

For the two-run report of tests/test_report.py, on a 1280 px desktop viewport and on an emulated
phone (375 × 812 CSS px, mobile, as Chrome's device mode does it):

* every ``<img>`` has loaded and decoded (``complete`` and ``naturalWidth > 0`` after ``load``; a
  corrupt or truncated PNG gives 0);
* the tables are there (runs, comparison, paired tests, summaries, per subject);
* nothing overflows horizontally (``scrollWidth ≤ innerWidth``; every image inside the viewport);
* a screenshot of the top of the page is taken at each width (kept under the test's tmp folder).

The browser is driven over the DevTools protocol on pipes (tests/cdp.py); without one the test is
skipped with that reason.
"""

from __future__ import annotations

import pytest

from cdp import Chromium, browser, skip  # noqa: F401  (browser is a fixture)
from test_report import shared_report  # the same session-wide runs and report (tests/ is on sys.path)

VIEWPORTS = {"desktop": {"width": 1280, "height": 900, "mobile": False, "deviceScaleFactor": 1},
             "phone": {"width": 375, "height": 812, "mobile": True, "deviceScaleFactor": 2}}

CHECK_JS = """(() => {
  const imgs = Array.from(document.images);
  const vw = window.innerWidth;
  return {
    images: imgs.length,
    broken: imgs.filter(im => !(im.complete && im.naturalWidth > 0 && im.naturalHeight > 0)).map(im => im.alt),
    outside: imgs.filter(im => { const r = im.getBoundingClientRect(); return r.width === 0 || r.right > vw + 1; })
                 .map(im => im.alt),
    tables: document.querySelectorAll("table").length,
    captions: Array.from(document.querySelectorAll("p.table-caption")).map(c => c.textContent),
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: vw,
    mainWidth: document.querySelector("main").getBoundingClientRect().width,
    fontSize: parseFloat(getComputedStyle(document.body).fontSize),
  };
})()"""


@pytest.mark.parametrize("layout", list(VIEWPORTS))
def test_report_renders_in_headless_chromium(browser, layout, tmp_path_factory, tmp_path):
    html = shared_report(tmp_path_factory)["html"]
    n_img = html.read_text().count("<img ")
    vp = VIEWPORTS[layout]
    try:
        chrome = Chromium(browser, tmp_path / "profile")
    except OSError as e:
        skip(f"{browser} could not be started: {e}")
    try:
        try:
            chrome.open_page(vp)
        except RuntimeError as e:
            skip(f"{browser} started but does not speak the DevTools protocol over a pipe: {e}")
        chrome.load(html.as_uri())
        res = chrome.evaluate(CHECK_JS)
        shot = chrome.screenshot(tmp_path / f"report-{vp['width']}px.png")
    finally:
        chrome.close()

    assert res["innerWidth"] == vp["width"]
    assert res["images"] == n_img > 0
    assert res["broken"] == [], f"images that did not load/decode: {res['broken']}"
    assert res["outside"] == [], f"images wider than the {vp['width']} px viewport: {res['outside']}"
    assert res["scrollWidth"] <= res["innerWidth"], f"horizontal overflow at {vp['width']} px: {res['scrollWidth']} px wide"
    assert res["tables"] >= 10
    captions = " | ".join(res["captions"])
    for cap in ("The runs in this report", "Comparison: mean ± std", "Paired tests: Wilcoxon", "Summary over subjects",
                "Per subject, region foreground", "worst axial slices"):
        assert cap in captions, cap
    assert res["fontSize"] >= 14  # readable without zooming, on the phone too
    if layout == "desktop":
        assert res["mainWidth"] <= 1200  # a readable measure on a wide screen

    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (vp["width"] * vp["deviceScaleFactor"], vp["height"] * vp["deviceScaleFactor"])
        assert len(set(im.convert("L").resize((64, 64)).getdata())) > 20  # not a blank page
