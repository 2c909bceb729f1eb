"""The Case review CT viewer (NiiVue in a Streamlit component) in a real browser: Debian's Chromium via Playwright.

Reuses the tiny-demo server, browser and page fixtures of tests/test_browser.py. The viewer runs in an
iframe; its state is read through ``window.ctehrViewer`` (the NiiVue instance and draw counters) and its
pixels through screenshots. The overlay test puts a known map (a ball) into the server's map cache under
the key the page computes, so it checks the display path on all three planes in seconds; the map
computation itself is covered by tests/test_volume_nifti.py and bench/bench_viewer.py.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.test_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    browser,
    choose,
    data_dir,
    opened_page,
    selected,
    server,
    settle,
    shot,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
if not CHROMIUM.exists():
    pytest.skip(f"Debian chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}


@pytest.fixture(scope="module")
def page(browser: object, server: str) -> Iterator[object]:  # noqa: F811
    """One Case review page for the whole module (each test starts where the previous one left the viewer)."""
    with opened_page(browser, server) as pg:
        yield pg


def viewer_frame(pg: object, timeout_s: float = 60.0) -> object:
    """The viewer's iframe once NiiVue has loaded the CT."""
    deadline = pg.evaluate("() => performance.now()") + timeout_s * 1000  # type: ignore[attr-defined]
    while True:
        frames = [f for f in pg.frames if "ctehr_ct_viewer" in f.url]  # type: ignore[attr-defined]
        if frames:
            try:
                if frames[0].evaluate("() => !!(window.ctehrViewer && window.ctehrViewer.loaded)"):
                    frames[0].wait_for_timeout(300)
                    return frames[0]
            except Exception as exc:  # a frame replaced while we read it: look again
                if "detached" not in str(exc) and "destroyed" not in str(exc) and "undefined" not in str(exc):
                    raise
        if pg.evaluate("() => performance.now()") > deadline:  # type: ignore[attr-defined]
            pytest.fail("the CT viewer did not load its volume")
        pg.wait_for_timeout(250)  # type: ignore[attr-defined]


def tile_in_canvas(fr: object, plane: str) -> tuple[float, float, float, float]:
    """(left, top, width, height) of a plane's tile in the canvas, CSS pixels."""
    l, t, w, h = fr.evaluate(  # type: ignore[attr-defined]
        """(p) => { const nv = window.ctehrViewer.nv, d = nv.uiData.dpr || 1;
                     const s = nv.screenSlices.find((x) => x.axCorSag === p);
                     return s.leftTopWidthHeight.map((v) => v / d); }""", PLANES[plane])
    return l, t, w, h


def tile_box(pg: object, fr: object, plane: str) -> tuple[float, float, float, float]:
    """(left, top, width, height) of a plane's tile in page CSS pixels (as the page is scrolled now)."""
    l, t, w, h = tile_in_canvas(fr, plane)
    canvas = fr.locator("#gl").bounding_box()  # type: ignore[attr-defined]
    return canvas["x"] + l, canvas["y"] + t, w, h


def crosshair(fr: object) -> list[int]:
    """The crosshair voxel (i sagittal, j coronal, k axial) in the viewer's RAS grid."""
    return list(fr.evaluate("() => Array.from(window.ctehrViewer.nv.frac2vox(window.ctehrViewer.nv.scene.crosshairPos))"))  # type: ignore[attr-defined]


def test_wheel_scrolls_slices_not_the_page(page: object) -> None:
    pg = page
    fr = viewer_frame(pg)
    left, top, w, h = tile_box(pg, fr, "axial")
    before = crosshair(fr)
    fr.evaluate("""() => { window._wheels = [];
        window.addEventListener('wheel', (e) => setTimeout(() => window._wheels.push(e.defaultPrevented), 0),
                                { capture: true }); }""")  # type: ignore[attr-defined]
    pg.mouse.move(left + w / 2, top + h / 2)  # type: ignore[attr-defined]
    pg.mouse.wheel(0, -120)  # type: ignore[attr-defined]
    pg.wait_for_timeout(200)  # type: ignore[attr-defined]
    pg.mouse.wheel(0, -120)  # type: ignore[attr-defined]
    pg.wait_for_timeout(300)  # type: ignore[attr-defined]
    after = crosshair(fr)
    assert after[2] != before[2], (before, after)          # the axial slice moved
    assert after[:2] == before[:2]                          # the other planes did not
    assert fr.evaluate("() => window._wheels") == [True, True]  # the viewer took the wheel: the page does not scroll
    # arrow keys step the plane under the mouse as well
    fr.locator("#gl").focus()  # type: ignore[attr-defined]
    pg.keyboard.press("ArrowDown")  # type: ignore[attr-defined]
    pg.wait_for_timeout(200)  # type: ignore[attr-defined]
    assert crosshair(fr)[2] == after[2] - 1


def test_scrolling_draws_fewer_pixels_then_the_full_slice(page: object) -> None:
    """While slices scroll the canvas has fewer pixels than its CSS size; once scrolling pauses, all of them.

    The frame is no taller than the tiles need: the wide demo layout left black bands before.
    """
    pg = page
    fr = viewer_frame(pg)
    size = "() => { const c = document.getElementById('gl'); return [c.width, c.height, c.clientWidth, c.clientHeight]; }"
    w0, h0, cw, ch = fr.evaluate(size)  # type: ignore[attr-defined]
    assert (w0, h0) == (cw, ch)                            # at rest: one canvas pixel per CSS pixel
    assert ch <= 560                                       # never taller than Python asked for ...
    _, top, _, tile_h = tile_in_canvas(fr, "axial")
    tops = [tile_in_canvas(fr, p)[1] for p in PLANES]
    bottoms = [sum(tile_in_canvas(fr, p)[1::2]) for p in PLANES]
    assert ch - (max(bottoms) - min(tops)) < 80            # ... and no band wider than the colour bar's room
    left, top, w, h = tile_box(pg, fr, "axial")
    pg.mouse.move(left + w / 2, top + h / 2)  # type: ignore[attr-defined]
    before = crosshair(fr)[2]
    read_voxel = "() => (document.getElementById('hover').textContent.match(/voxel \\(([^)]*)\\)/) || [])[1]"
    pg.mouse.wheel(0, 120)  # type: ignore[attr-defined]
    pg.wait_for_timeout(80)  # type: ignore[attr-defined]
    w1, h1, cw1, ch1 = fr.evaluate(size)  # type: ignore[attr-defined]
    assert crosshair(fr)[2] == before + 1                 # one slice per notch
    assert (cw1, ch1) == (cw, ch)                          # the same size on the page ...
    assert 0.4 * cw * ch < w1 * h1 < 0.6 * cw * ch         # ... drawn with about half the pixels
    pg.mouse.move(left + w / 2 + 1, top + h / 2)  # type: ignore[attr-defined]
    low = fr.evaluate(read_voxel)  # type: ignore[attr-defined]
    pg.wait_for_timeout(900)  # type: ignore[attr-defined]
    assert fr.evaluate(size)[:2] == [cw, ch]               # full resolution once scrolling paused
    pg.mouse.move(left + w / 2, top + h / 2)  # type: ignore[attr-defined]
    pg.mouse.move(left + w / 2 + 1, top + h / 2)  # type: ignore[attr-defined]
    full = fr.evaluate(read_voxel)  # type: ignore[attr-defined]
    assert low and low == full, (low, full)                # the HU readout: the same voxel at either resolution
    assert int(low.split(",")[2]) == crosshair(fr)[2] == before + 1  # on the axial slice shown


def test_right_drag_changes_window_level(page: object) -> None:
    pg = page
    fr = viewer_frame(pg)
    before = fr.evaluate("() => [window.ctehrViewer.nv.volumes[0].cal_min, window.ctehrViewer.nv.volumes[0].cal_max]")  # type: ignore[attr-defined]
    text_before = fr.locator("#window-text").inner_text()  # type: ignore[attr-defined]
    left, top, w, h = tile_box(pg, fr, "axial")
    x, y = left + w / 2, top + h / 2
    pg.mouse.move(x, y)  # type: ignore[attr-defined]
    pg.mouse.down(button="right")  # type: ignore[attr-defined]
    for k in range(1, 9):
        pg.mouse.move(x + 6 * k, y + 4 * k)  # type: ignore[attr-defined]
    pg.mouse.up(button="right")  # type: ignore[attr-defined]
    pg.wait_for_timeout(300)  # type: ignore[attr-defined]
    after = fr.evaluate("() => [window.ctehrViewer.nv.volumes[0].cal_min, window.ctehrViewer.nv.volumes[0].cal_max]")  # type: ignore[attr-defined]
    assert after != before and after[1] > after[0], (before, after)
    assert fr.locator("#window-text").inner_text() != text_before  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def opening_case(data_dir: Path) -> tuple[str, object, object]:  # noqa: F811
    """(subject id, cohort, volume) of the case the page opens on (the first test-split patient)."""
    from core.app.demo_install import demo_paths
    from core.cohort import load_cohort

    cohort = load_cohort(demo_paths(data_dir).cohort)
    sid = cohort.ids("test")[0]
    return sid, cohort, cohort.load_volume(sid)


def test_hu_readout_matches_the_voxel(page: object, opening_case: tuple) -> None:
    pg = page
    fr = viewer_frame(pg)
    left, top, w, h = tile_box(pg, fr, "axial")
    readings: list[tuple[float, tuple[int, int, int]]] = []
    for fx in np.linspace(0.03, 0.97, 25):
        pg.mouse.move(left + fx * w, top + 0.5 * h)  # type: ignore[attr-defined]
        text = fr.locator("#hover").inner_text()  # type: ignore[attr-defined]
        m = re.match(r"HU (-?[\d.]+) at voxel \((\d+), (\d+), (\d+)\)", text)
        if m:
            readings.append((float(m.group(1)), (int(m.group(2)), int(m.group(3)), int(m.group(4)))))
    assert len(readings) >= 15, readings
    values = [v for v, _ in readings]
    assert min(values) < -900                                   # air outside the body
    assert any(-100 <= v <= 100 for v in values)                # fat / soft tissue / fluid inside it
    # each reading is the CT's own HU at that voxel of the NIfTI the browser got (RAS grid), read here with nibabel
    import gzip

    import nibabel as nib

    from core.app.volume_nifti import volume_to_nifti

    grid = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(volume_to_nifti(opening_case[2]))).dataobj)
    expected = [float(grid[ijk]) for _, ijk in readings]
    np.testing.assert_allclose(values, expected, atol=0.51)


def test_click_in_one_plane_moves_the_others(page: object) -> None:
    pg = page
    fr = viewer_frame(pg)
    before = crosshair(fr)
    left, top, w, h = tile_box(pg, fr, "axial")
    pg.mouse.click(left + 0.3 * w, top + 0.35 * h)  # type: ignore[attr-defined]
    pg.wait_for_timeout(300)  # type: ignore[attr-defined]
    after = crosshair(fr)
    assert after[2] == before[2]                        # same axial slice
    assert after[0] != before[0] and after[1] != before[1]  # sagittal and coronal planes moved
    # and a click in the coronal plane moves the axial slice
    left, top, w, h = tile_box(pg, fr, "coronal")
    pg.mouse.click(left + 0.5 * w, top + 0.2 * h)  # type: ignore[attr-defined]
    pg.wait_for_timeout(300)  # type: ignore[attr-defined]
    assert crosshair(fr)[2] != after[2]
    # the millimetre scale bar under the axial tile: its width is its length at the tile's mm per pixel
    scale = fr.locator("#scale")  # type: ignore[attr-defined]
    mm = int(re.fullmatch(r"(\d+) mm", scale.inner_text()).group(1))
    per_px = fr.evaluate("() => window.ctehrViewer.mmPerCssPx")  # type: ignore[attr-defined]
    assert scale.bounding_box()["width"] == pytest.approx(mm / per_px, rel=0.05)
    fov = fr.evaluate("() => window.ctehrViewer.nv.volumes[0].dimsRAS[1] * window.ctehrViewer.nv.volumes[0].pixDimsRAS[1]")  # type: ignore[attr-defined]
    assert per_px * tile_box(pg, fr, "axial")[2] == pytest.approx(fov, rel=0.1)  # the tile spans the field of view
    shot_path = SCREENSHOTS / "viewer_crosshair.png"
    fr.locator("body").screenshot(path=str(shot_path))  # type: ignore[attr-defined]
    shot(pg, "viewer_crosshair_page")


def test_the_keyboard_alone_steps_every_plane(page: object) -> None:
    """Tab reaches the CT with a visible focus ring; keys A, C and S choose the plane the arrow keys step, and the
    readout marks it (by keyboard only the axial plane could be stepped, and nothing showed the focus)."""
    pg = page
    fr = viewer_frame(pg)
    pg.mouse.move(1, 1)  # off the tiles: the keys alone choose the plane
    fr.locator("#reset").focus()  # type: ignore[attr-defined]
    pg.keyboard.press("Tab")  # type: ignore[attr-defined]
    assert fr.evaluate("() => document.activeElement.id") == "gl"  # type: ignore[attr-defined]
    assert fr.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") == "solid"  # type: ignore[attr-defined]
    for key, name in (("c", "coronal"), ("s", "sagittal"), ("a", "axial")):
        pg.keyboard.press(key)  # type: ignore[attr-defined]
        pg.wait_for_timeout(100)  # type: ignore[attr-defined]
        index = {"sagittal": 0, "coronal": 1, "axial": 2}[name]  # crosshair voxel: i sagittal, j coronal, k axial
        before = crosshair(fr)
        pg.keyboard.press("ArrowDown" if before[index] > 0 else "ArrowUp")  # type: ignore[attr-defined]
        pg.wait_for_timeout(300)  # type: ignore[attr-defined]
        after = crosshair(fr)
        assert [i for i in range(3) if after[i] != before[i]] == [index], (name, before, after)
        assert "\u25b8" + name in fr.locator("#cross").inner_text()  # type: ignore[attr-defined]


def test_a_screen_reader_names_the_viewer_and_its_buttons(page: object) -> None:
    """The iframe is announced as "CT viewer" (Streamlit titles it with the component's module path), the zoom
    buttons by what they do (not "plus" and "minus"), and the left-drag mode buttons say which one is pressed."""
    pg = page
    fr = viewer_frame(pg)
    assert pg.locator('iframe[title="CT viewer"]').count() == 1  # type: ignore[attr-defined]
    snapshot = pg.locator("body").aria_snapshot()  # type: ignore[attr-defined]
    inner = fr.locator("#bar").aria_snapshot()  # type: ignore[attr-defined]
    assert '"Zoom in"' in inner and '"Zoom out"' in inner, inner
    fr.locator("#mode-pan").click()  # type: ignore[attr-defined]
    pressed = fr.evaluate("() => [...document.querySelectorAll('#bar button[data-mode]')]"  # type: ignore[attr-defined]
                          ".map(b => b.id + '=' + b.getAttribute('aria-pressed'))")
    assert pressed == ["mode-crosshair=false", "mode-window=false", "mode-pan=true"], pressed
    fr.locator("#mode-crosshair").click()  # type: ignore[attr-defined]
    assert fr.locator("#mode-crosshair").get_attribute("aria-pressed") == "true"  # type: ignore[attr-defined]
    assert "pages._viewer" not in snapshot


def steady_renders(pg: object, fr: object, timeout_s: float = 10.0) -> int:
    """The viewer's render count once it has not changed for 0.6 s (a busy machine delivers a last rerun late)."""
    count = fr.evaluate("() => window.ctehrViewer.renders")  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pg.wait_for_timeout(600)  # type: ignore[attr-defined]
        now = fr.evaluate("() => window.ctehrViewer.renders")  # type: ignore[attr-defined]
        if now == count:
            break
        count = now
    return int(count)


def test_slice_survives_a_page_switch(page: object) -> None:
    """The crosshair goes back to the server (when scrolling pauses 2 s, or at once when the mouse leaves the
    viewer) and Export and Case review use it."""
    pg = page
    fr = viewer_frame(pg)
    left, top, w, h = tile_box(pg, fr, "axial")
    pg.mouse.move(left + w / 2, top + h / 2)  # type: ignore[attr-defined]
    settle(pg)  # a rerun still due from the previous test's clicks is not one the scroll caused
    renders = steady_renders(pg, fr)
    for _ in range(3):
        pg.mouse.wheel(0, 100)  # type: ignore[attr-defined]
        pg.wait_for_timeout(150)  # type: ignore[attr-defined]
    there = crosshair(fr)
    pg.wait_for_timeout(800)  # type: ignore[attr-defined]
    assert fr.evaluate("() => window.ctehrViewer.renders") == renders  # type: ignore[attr-defined]  (no rerun yet)
    pg.mouse.move(5, 5)  # type: ignore[attr-defined]  (out of the viewer: the position goes to the server now)
    pg.wait_for_timeout(500)  # type: ignore[attr-defined]
    settle(pg)
    assert fr.evaluate("() => window.ctehrViewer.renders") > renders  # type: ignore[attr-defined]
    export_slice_and_back(pg, there)


def test_slice_survives_a_reload_right_after_scrolling(page: object) -> None:
    """A reload (F5) within 2 s of scrolling came before the viewer's report: the tab opened on the slice before the
    scroll. The viewer keeps each crosshair in the tab and takes it back after a reload of the same address."""
    pg = page
    fr = viewer_frame(pg)
    left, top, w, h = tile_box(pg, fr, "axial")
    pg.mouse.move(left + w / 2, top + h / 2)  # type: ignore[attr-defined]
    before = crosshair(fr)
    for _ in range(4):
        pg.mouse.wheel(0, -100)  # type: ignore[attr-defined]
        pg.wait_for_timeout(100)  # type: ignore[attr-defined]
    there = crosshair(fr)
    assert there[2] != before[2]
    pg.reload()  # type: ignore[attr-defined]  (well within the 2 s after which the viewer reports)
    settle(pg)
    assert crosshair(viewer_frame(pg)) == there
    pg.wait_for_timeout(500)  # type: ignore[attr-defined]  (the viewer's report of it reaches the server)
    settle(pg)
    export_slice_and_back(pg, there)


def export_slice_and_back(pg: object, there: list[int]) -> None:
    """Export shows the crosshair's axial slice (the server has it), and Case review opens again with the crosshair
    at ``there`` (RAS voxel)."""
    pg.locator('[data-testid="stSidebarNav"]').get_by_text("Export", exact=True).click()  # type: ignore[attr-defined]
    settle(pg)
    captions = pg.locator('[data-testid="stCaptionContainer"]').all_inner_texts()  # type: ignore[attr-defined]
    assert any(c.startswith(f"Axial slice {there[2] + 1}/") for c in captions), (there, captions)
    pg.locator('[data-testid="stSidebarNav"]').get_by_text("Case review", exact=True).click()  # type: ignore[attr-defined]
    settle(pg)
    assert crosshair(viewer_frame(pg)) == there


VIEWER_COUNTS = """() => { const s = window.ctehrViewer;
    return {received: s.received, renders: s.renders, held: Array.from(s.buffers.keys()),
            cal: [s.nv.volumes[0].cal_min, s.nv.volumes[0].cal_max]}; }"""


def test_a_rerun_does_not_send_the_ct_again(browser: object, server: str, opening_case: tuple) -> None:  # noqa: F811
    """The CT's bytes reach a browser once: reruns of the viewer block send none (WebSocket bytes counted), and a
    viewer that lost them (its iframe reloaded) asks for them and gets them once."""
    from core.app.volume_nifti import volume_to_nifti

    ct_size = len(volume_to_nifti(opening_case[2]))
    context = browser.new_context(viewport={"width": 1500, "height": 1100})  # type: ignore[attr-defined]
    try:
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        frames: list[int] = []
        pg.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(len(payload))))
        pg.goto(server)
        settle(pg)
        fr = viewer_frame(pg)
        pg.wait_for_timeout(1000)  # the viewer's report of what it holds reaches the server
        settle(pg)
        first = fr.evaluate(VIEWER_COUNTS)  # type: ignore[attr-defined]
        assert first["received"] >= 1 and len(first["held"]) == 1 and first["held"][0].startswith("ct-"), first
        assert sum(frames) >= ct_size  # the CT did come over this session's WebSocket
        before = sum(frames)
        windows = []
        start = selected(pg, "Window").split(" [")[0]  # the preset this user's settings opened with
        presets = [p for p in ("Lung", "Bone", "Liver") if p != start][:2] + [start]
        for preset in presets:  # three reruns of the viewer block, each with new arguments
            choose(pg, "Window", preset)
            settle(pg)
            windows.append(fr.evaluate(VIEWER_COUNTS)["cal"])  # type: ignore[attr-defined]
        after = fr.evaluate(VIEWER_COUNTS)  # type: ignore[attr-defined]
        assert after["renders"] >= first["renders"] + 3, (first, after)  # the reruns reached the viewer ...
        assert windows[0] != first["cal"] and windows[1] != windows[0] and windows[2] == first["cal"], windows
        assert after["received"] == first["received"], (first, after)  # ... with no volume bytes
        assert sum(frames) - before < ct_size / 4, (sum(frames) - before, ct_size)
        # a new document in the viewer's iframe holds nothing: it asks, and the CT comes over the WebSocket once
        before = sum(frames)
        fr.evaluate("() => location.reload()")  # type: ignore[attr-defined]
        pg.wait_for_timeout(500)
        fr = viewer_frame(pg)
        pg.wait_for_timeout(1000)
        settle(pg)
        again = fr.evaluate(VIEWER_COUNTS)  # type: ignore[attr-defined]
        assert again["received"] >= 1 and again["held"] == first["held"], again
        assert ct_size <= sum(frames) - before < 2 * ct_size, (sum(frames) - before, ct_size)
    finally:
        context.close()


def _seed_ball_map(data_dir: Path, method: str) -> tuple[str, tuple[int, int, int]]:  # noqa: F811
    """Put a ball-shaped ``method`` map for the opening case into the server's disk cache; its key and centre voxel.

    A method no other test computes (the server may hold another test's real map of a method in memory)."""
    from core.app import attribution_volume as AV
    from core.app.demo_install import DEFAULT_FUSION, demo_paths
    from core.cohort import load_cohort
    from core.horizons import DEFAULT_HORIZON
    from core.registry import load_model

    paths = demo_paths(data_dir)
    cohort = load_cohort(paths.cohort)
    sid = cohort.ids("test")[0]
    model = load_model(paths.models / DEFAULT_FUSION)
    inputs = model.case_inputs(cohort, sid)
    s, r, c = (int(v) for v in inputs.image.shape[1:])
    centre = (s // 2, r // 3, c // 3)
    zz, yy, xx = np.meshgrid(np.arange(s), np.arange(r), np.arange(c), indexing="ij")
    ball = ((zz - centre[0]) ** 2 / 16 + (yy - centre[1]) ** 2 / 64 + (xx - centre[2]) ** 2 / 64 <= 1).astype(np.float32)
    key = AV.map_key(AV.case_digest(inputs), AV.model_stamp(model.model_dir), method, DEFAULT_HORIZON)
    AV.MapCache(data_dir / "cache" / "maps").put(key, ball)
    return key, centre


def _overlay_pixels(png: bytes, box: tuple[float, float, float, float]) -> int:
    """Warm-colormap pixels inside a tile (``box`` in canvas CSS pixels) of a screenshot of the canvas."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    left, top, w, h = (int(np.rint(v)) for v in box)
    tile = img[top:top + h, left:left + w]
    r, b = tile[..., 0], tile[..., 2]
    return int(((r - b > 80) & (r > 150)).sum())  # the warm colormap: orange-yellow, never grey


def test_overlay_on_all_three_planes(page: object, data_dir: Path) -> None:  # noqa: F811
    pg = page
    _, centre = _seed_ball_map(data_dir, "occlusion")
    fr = viewer_frame(pg)
    pg.get_by_text("Saliency overlay").click()  # type: ignore[attr-defined]
    settle(pg, 60)
    choose(pg, "Method", "Occlusion")
    settle(pg, 60)
    # the caveat and sanity line beside the viewer (outside its fragment) follow the method picked in it
    caveat = pg.locator('[data-testid="stMarkdownContainer"]').filter(has_text="Sanity:").first  # type: ignore[attr-defined]
    assert caveat.inner_text().startswith("Occlusion:"), caveat.inner_text()
    fr = viewer_frame(pg)
    fr.wait_for_function("() => window.ctehrViewer.nv.volumes.length === 2", timeout=60_000)  # type: ignore[attr-defined]
    # put the crosshair on the ball's centre: (slice, row, col) -> RAS voxel of the canonical grid
    fr.evaluate(  # type: ignore[attr-defined]
        """([s, r, c]) => { const nv = window.ctehrViewer.nv, d = nv.volumes[0].dimsRAS;
             nv.scene.crosshairPos = nv.vox2frac([d[1] - 1 - c, d[2] - 1 - r, s]); nv.drawScene(); }""", list(centre))
    pg.wait_for_timeout(400)  # type: ignore[attr-defined]
    canvas = fr.locator("#gl")  # type: ignore[attr-defined]
    png = canvas.screenshot()
    counts = {p: _overlay_pixels(png, tile_in_canvas(fr, p)) for p in PLANES}
    assert all(n >= 20 for n in counts.values()), counts
    # with the overlay hidden (opacity 0) the same tiles have no warm pixels
    fr.evaluate("() => { const nv = window.ctehrViewer.nv; nv.volumes[1].opacity = 0; nv.updateGLVolume(); }")  # type: ignore[attr-defined]
    pg.wait_for_timeout(300)  # type: ignore[attr-defined]
    png_off = canvas.screenshot()
    off = {p: _overlay_pixels(png_off, tile_in_canvas(fr, p)) for p in PLANES}
    assert all(n == 0 for n in off.values()), off
    fr.evaluate("() => { const nv = window.ctehrViewer.nv; nv.volumes[1].opacity = 0.6; nv.updateGLVolume(); }")  # type: ignore[attr-defined]
    pg.wait_for_timeout(300)  # type: ignore[attr-defined]
    fr.locator("body").screenshot(path=str(SCREENSHOTS / "viewer_overlay.png"))  # type: ignore[attr-defined]


def test_go_to_the_maps_strongest_spot(page: object, data_dir: Path) -> None:  # noqa: F811
    """After the overlay test (the ball map shown): the button moves the crosshair from outside the ball into it, on
    every plane, and the server follows (Export's slice is the ball's)."""
    pg = page
    _, centre = _seed_ball_map(data_dir, "occlusion")  # the same ball, for its centre
    fr = viewer_frame(pg)
    dims = fr.evaluate("() => Array.from(window.ctehrViewer.nv.volumes[0].dimsRAS)")  # type: ignore[attr-defined]
    fr.evaluate("() => { const nv = window.ctehrViewer.nv; nv.scene.crosshairPos = nv.vox2frac([0, 0, 0]); nv.drawScene(); }")  # type: ignore[attr-defined]
    button = pg.get_by_role("button", name=re.compile(r"Go to the map's strongest spot \(slice \d+ of \d+\)"))  # type: ignore[attr-defined]
    assert button.count() == 1
    assert f"(slice {centre[0] + 1} of {dims[3]})" in button.inner_text()  # the ball's middle slice has the most colour
    button.click()
    settle(pg)
    fr = viewer_frame(pg)
    fr.wait_for_function("() => window.ctehrViewer.nv.frac2vox(window.ctehrViewer.nv.scene.crosshairPos)[2] > 0",  # type: ignore[attr-defined]
                         timeout=30_000)
    i, j, k = crosshair(fr)
    s, r, c = k, dims[2] - 1 - j, dims[1] - 1 - i  # RAS voxel -> (slice, row, col) of the study
    assert (s - centre[0]) ** 2 / 16 + (r - centre[1]) ** 2 / 64 + (c - centre[2]) ** 2 / 64 <= 1, ((s, r, c), centre)
    pg.mouse.move(5, 5)  # type: ignore[attr-defined]
    pg.wait_for_timeout(2500)  # type: ignore[attr-defined]  (the viewer reports the new crosshair to the server)
    settle(pg)
    export_slice_and_back(pg, [i, j, k])


def test_overlay_off_and_on_again_sends_no_map_bytes(page: object) -> None:
    """After the overlay test: switching the overlay off hides the map (kept in the browser), on again shows it
    with no bytes sent."""
    pg = page
    fr = viewer_frame(pg)
    opacity = "() => window.ctehrViewer.nv.volumes.length === 2 ? window.ctehrViewer.nv.volumes[1].opacity : -1"
    assert fr.evaluate(opacity) > 0  # type: ignore[attr-defined]
    before = fr.evaluate(VIEWER_COUNTS)  # type: ignore[attr-defined]
    assert any(h.startswith("map-") for h in before["held"]), before
    pg.get_by_text("Saliency overlay").click()  # type: ignore[attr-defined]
    settle(pg, 60)
    fr.wait_for_function(f"() => ({opacity})() === 0", timeout=30_000)  # type: ignore[attr-defined]
    pg.get_by_text("Saliency overlay").click()  # type: ignore[attr-defined]
    settle(pg, 60)
    fr.wait_for_function(f"() => ({opacity})() > 0", timeout=30_000)  # type: ignore[attr-defined]
    after = fr.evaluate(VIEWER_COUNTS)  # type: ignore[attr-defined]
    assert after["received"] == before["received"] and after["renders"] >= before["renders"] + 2, (before, after)


def test_without_webgl_the_page_falls_back_to_plain_planes(browser: object, server: str) -> None:  # noqa: F811
    from tests.test_browser import CHROMIUM_ARGS

    no_gl = browser.browser_type.launch(executable_path=str(CHROMIUM), headless=True,  # type: ignore[attr-defined]
                                        args=[*CHROMIUM_ARGS, "--disable-webgl", "--disable-3d-apis"])
    try:
        pg = no_gl.new_page(viewport={"width": 1500, "height": 1100})
        pg.goto(server)
        settle(pg)
        pg.get_by_text("showing plain planes instead").wait_for(timeout=60_000)
        settle(pg)
        assert "no WebGL2" in pg.locator('[data-testid="stAlert"]').filter(has_text="plain planes").inner_text()
        # the planes come with the page rerun the viewer's report starts, which can start late on a busy machine
        pg.locator('[data-testid="stPlotlyChart"] .gtitle').filter(has_text="sagittal ").first.wait_for(timeout=60_000)
        titles = pg.locator('[data-testid="stPlotlyChart"] .gtitle').all_text_contents()
        assert any(t.startswith("axial ") for t in titles) and any(t.startswith("sagittal ") for t in titles), titles
    finally:
        no_gl.close()
