"""The app in a real browser: Debian's Chromium driven by Playwright.

A tiny demo (few patients, one epoch, three strategies) is built in a temp dir,
``streamlit run app.py`` is started on a free port with ``CTEHR_DATA_DIR``
pointing at it, and each test drives a fresh page. The server is always killed.
Set ``CTEHR_SCREENSHOTS=<folder>`` to keep a screenshot of every page.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
if not CHROMIUM.exists():
    pytest.skip(f"Debian chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_app import build_test_demo

    return build_test_demo(tmp_path_factory)


def wait_http(url: str, proc: subprocess.Popen, log: Path, what: str) -> None:
    """Wait until ``url`` answers 200; fail with the end of ``log`` when ``proc`` exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass  # not listening yet: try again until the deadline
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start within {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


SESSION_TTL_S = 5  # Streamlit keeps a closed tab's session this long (120 s by default): test_closed_tab_* waits it out


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {**os.environ, "CTEHR_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.disconnectedSessionTTL", str(SESSION_TTL_S)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/_stcore/health", proc, log, "streamlit")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text or "Uncaught app exception" not in text, text[-3000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def opened_page(browser: object, server: str) -> Iterator[object]:
    """A fresh browser context (its own Streamlit session) on the app, once the first run has settled."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)  # type: ignore[attr-defined]
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server)
    # the first run may start seconds after the page loads on a busy machine: wait for its title, then for its end
    pg.locator("h1").first.wait_for(timeout=180_000)
    settle(pg)
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture()
def page(browser: object, server: str) -> Iterator[object]:
    with opened_page(browser, server) as pg:
        yield pg


def download(pg: object, prepare_label: str, download_label: str, folder: Path) -> Path:
    """Prepare an Export output, download it and save it under ``folder``; the saved file.

    A "Prepare" click can be lost when it lands while the page is being redrawn (seen once in CI: no job box, no
    download button for 60 s); with neither showing after a minute the helper clicks it again, as a user would.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    prepare(pg, prepare_label)
    settle(pg, 300)
    button = pg.get_by_role("button", name=download_label)  # type: ignore[attr-defined]
    main = pg.locator('[data-testid="stMain"]')  # type: ignore[attr-defined]
    for attempt in (1, 2):
        try:
            button.wait_for(timeout=60_000 if attempt == 1 else 300_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise AssertionError(f"{download_label!r} not shown 6 minutes after {prepare_label!r}; the page's "
                                     f"main area showed:\n{main.inner_text()[:1500]}") from None
            if not main.locator('[data-testid="stProgress"]').count():  # no job running: the click was lost
                prepare(pg, prepare_label)
                settle(pg, 300)
    with pg.expect_download() as info:  # type: ignore[attr-defined]
        button.click()
    target = folder / info.value.suggested_filename
    info.value.save_as(str(target))
    return target


def settle(pg: object, timeout_s: float = 90.0) -> None:
    """Wait until the script run the last action started has finished (and the page shows no exception).

    On a busy machine the run can start a second or more after the click: wait up to 2.5 s for it to start, so
    the page from before the action is not taken for its result.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        pg.wait_for_selector('[data-testid="stApp"]:not([data-test-script-state="notRunning"])',  # type: ignore[attr-defined]
                             timeout=2500)
    except PlaywrightTimeout:
        pg.wait_for_timeout(100)  # type: ignore[attr-defined]  # the run ended before we looked, or none started
    idle = '[data-testid="stApp"][data-test-script-state="notRunning"]'
    for _ in range(3):  # a page that leaves with st.switch_page starts the next page's run a moment after it ended
        pg.wait_for_selector(idle, timeout=timeout_s * 1000)  # type: ignore[attr-defined]
        pg.wait_for_timeout(300)  # type: ignore[attr-defined]
        if pg.locator(idle).count():  # type: ignore[attr-defined]  # still idle: that run was the last one
            break
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator('[data-testid="stException"]').first.inner_text()  # type: ignore[attr-defined]


def shot(pg: object, name: str) -> None:
    folder = os.environ.get("CTEHR_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def cut_off(pg: object, selector: str) -> list[str]:
    """The texts of the elements matching ``selector`` that are cut off (an ellipsis: some element in them is
    narrower than its content)."""
    return pg.evaluate("""s => [...document.querySelectorAll(s)].filter(e => [e, ...e.querySelectorAll('*')]
        .some(d => d.scrollWidth > d.clientWidth + 1)).map(e => e.innerText)""", selector)  # type: ignore[attr-defined]


def prepare(pg: object, label: str, timeout_s: float = 240.0) -> None:
    """Click an Export "Prepare ..." button once it is enabled (it waits for the case's whole-volume map job)."""
    from playwright.sync_api import expect

    button = pg.get_by_role("button", name=label)  # type: ignore[attr-defined]
    try:
        expect(button).to_be_enabled(timeout=timeout_s * 1000)
    except AssertionError as exc:  # say what the page showed instead, for the CI log
        state = pg.locator('[data-testid="stApp"]').get_attribute("data-test-script-state")  # type: ignore[attr-defined]
        main = pg.locator('[data-testid="stMain"]').inner_text()[:1500]  # type: ignore[attr-defined]
        raise AssertionError(f"{label!r} not enabled within {timeout_s:.0f} s at {pg.url} (script {state}); "  # type: ignore[attr-defined]
                             f"the page's main area showed:\n{main}") from exc
    settle(pg, 300)  # the run that enabled it has ended: the click lands on the button as drawn, not mid-redraw
    button.click()


PAGE_PATHS = {"Case review": "", "Upload": "upload", "Cohort & models": "cohort_models", "Export": "export",
              "About": "about"}
PAGE_HEADINGS = {"Upload": "Upload a case"}  # a page's h1 where it differs from its sidebar title


def page_state(pg: object) -> str:
    """What the browser shows now, for a failure's message: the address, whether a script run is going on, the
    connection status Streamlit shows while its WebSocket is down, and the start of the main area."""
    app = pg.locator('[data-testid="stApp"]')  # type: ignore[attr-defined]
    state = app.first.get_attribute("data-test-script-state") if app.count() else "no stApp"
    status = pg.locator('[data-testid="stStatusWidget"], [data-testid="stConnectionStatus"]')  # type: ignore[attr-defined]
    status_text = status.first.inner_text().strip() if status.count() else ""
    main = pg.locator('[data-testid="stMain"]')  # type: ignore[attr-defined]
    main_text = main.first.inner_text()[:300].replace("\n", " | ") if main.count() else "no main area"
    return f"url {pg.url}, script state {state}, status widget {status_text!r}, main area: {main_text!r}"  # type: ignore[attr-defined]


def go(pg: object, title: str, attempts: int = 3) -> None:
    """Open a page from the sidebar; return once the browser is on it, its run ended and its own heading shows.

    Three races are retried (at most ``attempts`` times), each as a user would:

    * a click that lands while the sidebar is being redrawn (a run that has just ended) can hit the old element and
      do nothing: the address bar still names the previous page; the link is clicked again;
    * the new page's run can end without drawing anything: seen once in CI (the address bar named Export, the
      sidebar was drawn, the main area stayed empty for 240 s), cause not found, not reproduced in 8 quick clicks
      from a loading Case review under load; the link is clicked again (clicking the current page's link reruns it);
    * the sidebar link not clickable for a minute after such an empty page (seen once in a suite run on 2 busy
      cores, session 75): the page is reloaded.

    Every retry and the final failure say what the browser showed (``page_state``); a retry is reported as a
    warning in the suite's summary, so a stall that a retry hid is still seen.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    path = PAGE_PATHS[title]
    target = re.compile(r"^https?://[^/]+/" + re.escape(path) + r"(\?.*)?$")
    heading = pg.locator('[data-testid="stMain"] h1').filter(has_text=PAGE_HEADINGS.get(title, title))  # type: ignore[attr-defined]
    link = pg.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True)  # type: ignore[attr-defined]
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            link.click(timeout=60_000)
        except PlaywrightTimeout:
            _fail_or_warn(pg, last, f"the sidebar link {title!r} was not clickable for 60 s",
                          f"go({title!r}): the sidebar link was not clickable for 60 s, page reloaded")
            pg.reload()  # type: ignore[attr-defined]
            pg.locator("h1").first.wait_for(timeout=180_000)  # type: ignore[attr-defined]
            settle(pg)
            continue
        try:
            pg.wait_for_url(target, timeout=10_000)  # type: ignore[attr-defined]
        except PlaywrightTimeout:
            if last:
                raise AssertionError(f"the sidebar link {title!r} did not open its page: {page_state(pg)}") from None
            continue
        settle(pg)
        try:
            heading.first.wait_for(state="visible", timeout=30_000)
            return
        except PlaywrightTimeout:
            _fail_or_warn(pg, last, f"the page {title!r} opened but did not draw its heading",
                          f"go({title!r}): no heading 30 s after the page's run ended, clicked again")


def _fail_or_warn(pg: object, last: bool, failure: str, retry: str) -> None:
    """A stall of :func:`go`: its last attempt fails saying what the page showed; an earlier one is a warning in the
    suite's summary (the retry follows)."""
    import warnings

    seen = page_state(pg)
    if last:
        raise AssertionError(f"{failure}: {seen}")
    warnings.warn(f"{retry}; {seen}", stacklevel=3)


def choose(pg: object, label: str, option: str | re.Pattern[str]) -> None:
    """Pick ``option`` in the select box ``label`` (a text matches case-insensitively anywhere, spaces trimmed: use a
    pattern to anchor it)."""
    box = pg.locator('[data-testid="stSelectbox"]').filter(has_text=label).first  # type: ignore[attr-defined]
    # a box below the fold: scrolled to first, since the list a click opens closes on the scroll that click starts
    box.scroll_into_view_if_needed()
    pg.wait_for_timeout(300)  # type: ignore[attr-defined]
    # streamlit 1.67 renders a react-aria combobox (older versions a baseweb select)
    box.locator('[role="combobox"], div[data-baseweb="select"]').first.click()
    pg.locator('[role="option"]').filter(has_text=option).first.click()  # type: ignore[attr-defined]
    settle(pg)


def selected(pg: object, label: str) -> str:
    """The shown value of a select box (the combobox input's value, or the box's text)."""
    box = pg.locator('[data-testid="stSelectbox"]').filter(has_text=label).first  # type: ignore[attr-defined]
    combo = box.locator('[role="combobox"]')
    return combo.first.input_value() if combo.count() else box.inner_text()


def test_case_review_viewer_interactions(page: object) -> None:
    pg = page
    assert pg.get_by_text("Case review").first.is_visible()  # type: ignore[attr-defined]
    # the metrics come with the case's prediction, which a busy machine may finish after the first run settled
    pg.get_by_text("1-year risk").first.wait_for(state="visible", timeout=60_000)  # type: ignore[attr-defined]
    assert pg.get_by_text("1-year risk").is_visible()  # type: ignore[attr-defined]
    assert pg.locator('iframe[src*="ctehr_ct_viewer"]').count() == 1  # type: ignore[attr-defined]  (the CT viewer)
    # the curve, the attention strip and the timeline (the viewer's report of what it holds may rerun the page once)
    pg.wait_for_function("document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length >= 3",  # type: ignore[attr-defined]
                         timeout=60_000)
    shot(pg, "case_review")
    # window preset (the viewer's own interactions are in tests/test_viewer_browser.py)
    choose(pg, "Window", "Lung")
    assert "Lung" in selected(pg, "Window")
    # saliency toggle: the whole-volume map is computed in the background with a progress bar, or comes from the cache
    pg.get_by_text("Saliency overlay").click()  # type: ignore[attr-defined]
    settle(pg, 120)
    viewer = next(f for f in pg.frames if "ctehr_ct_viewer" in f.url)  # type: ignore[attr-defined]
    computing = pg.locator('[data-testid="stProgress"]').count() >= 1  # type: ignore[attr-defined]
    if not computing:  # the job may have just finished: its map reaches the viewer with the next message
        viewer.wait_for_function("() => window.ctehrViewer.nv.volumes.length === 2", timeout=60_000)
    assert computing or viewer.evaluate("() => window.ctehrViewer.nv.volumes.length") == 2
    shot(pg, "case_review_saliency")
    # overlay off again: a select change can be lost while a job's progress fragment reruns every second
    pg.get_by_text("Saliency overlay").click()  # type: ignore[attr-defined]
    settle(pg)
    # fusion strategy in the sidebar
    choose(pg, "Fusion strategy", "ehr_only")
    assert pg.locator('[data-testid="stMetric"]').filter(has_text="Fusion strategy").first.inner_text().count("ehr_only") == 1  # type: ignore[attr-defined]


UPLOAD_OUTCOMES = ("In memory, not saved yet", "Study not loaded", "Blocked: this study", "Timeline not loaded",
                   "Features table not loaded")


def _upload(pg: object, path: Path, index: int = 0) -> None:
    """Choose a file in an uploader; return once the page shows what became of it (loaded, blocked or an error).

    On a busy machine the file's transfer and the run it starts can take longer than settle()'s look for a run:
    CI once went on from the page as it was before the upload (stop 39), so the outcome itself is waited for: the
    main area's text changed and names one of UPLOAD_OUTCOMES.
    """
    main = pg.locator('[data-testid="stMain"]')  # type: ignore[attr-defined]
    before = main.inner_text()
    pg.locator('[data-testid="stFileUploaderDropzoneInput"]').nth(index).set_input_files(str(path))  # type: ignore[attr-defined]
    pg.wait_for_function(  # type: ignore[attr-defined]
        "([before, outcomes]) => { const main = document.querySelector('[data-testid=\"stMain\"]');"
        " if (main === null || main.innerText === before) return false;"
        " return outcomes.some(t => main.innerText.includes(t)); }",
        arg=[before, list(UPLOAD_OUTCOMES)], timeout=120_000)
    settle(pg, 120)


def test_upload_real_nifti_and_review(page: object, real_ct: Path) -> None:
    from playwright.sync_api import expect

    pg = page
    go(pg, "Upload")
    _upload(pg, real_ct)
    # the preview is a Plotly figure, drawn by the browser after the run has ended
    expect(pg.get_by_text("middle axial slice").first).to_be_visible(timeout=60_000)  # type: ignore[attr-defined]
    assert pg.get_by_text(re.compile(r"30 x 101 x 122")).count() >= 1  # type: ignore[attr-defined]
    assert pg.get_by_text("Out of distribution", exact=False).count() >= 1  # type: ignore[attr-defined]  # abdominal CT
    shot(pg, "upload")
    # 800 px with the sidebar open: the preview over the study's facts and warnings, the Discard button whole
    wide = pg.viewport_size  # type: ignore[attr-defined]
    pg.set_viewport_size({"width": 800, "height": wide["height"]})  # type: ignore[attr-defined]
    pg.wait_for_timeout(1000)  # type: ignore[attr-defined]
    preview, facts = (pg.get_by_text(t).first.bounding_box() for t in ("middle axial slice", "format:"))  # type: ignore[attr-defined]
    assert facts["x"] < preview["x"] + 60 and facts["y"] > preview["y"] + 150  # under it (a bullet in), not beside it
    assert cut_off(pg, '[data-testid="stButton"] button') == []
    pg.set_viewport_size(wide)  # type: ignore[attr-defined]
    pg.get_by_role("button", name="Save as a new case").click()  # type: ignore[attr-defined]
    # saved, then on Case review: the abdominal CT is withheld from the demo model (trained on chest phantoms)
    pg.get_by_text("The CT is withheld from", exact=False).first.wait_for()  # type: ignore[attr-defined]
    settle(pg, 120)
    shot(pg, "case_review_uploaded_withheld")
    assert re.search(r"Uploaded: Case \d+ · CT · added", pg.content())  # type: ignore[attr-defined]
    # the warnings under the withheld notice: on a loaded machine the page may still be drawing them (CI, stop 56)
    expect(pg.get_by_text("Missing modality").first).to_be_visible(timeout=30_000)  # type: ignore[attr-defined]  # no timeline uploaded
    expect(pg.get_by_text("lung air (air enclosed by the body) 0.39 L", exact=False).first).to_be_visible(timeout=30_000)  # type: ignore[attr-defined]
    # the survival column is drawn after the viewer: on a loaded machine it may come a moment after the run settled
    expect(pg.get_by_text("No curve:", exact=False).first).to_be_visible(timeout=30_000)  # type: ignore[attr-defined]
    assert pg.get_by_text("1-year risk").count() == 0  # type: ignore[attr-defined]  # no risk read from bowel gas
    assert pg.locator('[data-testid="stVegaLiteChart"]').count() == 0  # type: ignore[attr-defined]
    # read anyway on request: the risk and the survival chart come back, the warnings stay
    pg.get_by_text("Read this CT anyway", exact=False).click()  # type: ignore[attr-defined]
    pg.get_by_text("1-year risk").first.wait_for(timeout=120_000)  # type: ignore[attr-defined]
    settle(pg, 120)
    shot(pg, "case_review_uploaded")
    for note in ("lung air (air enclosed by the body) 0.39 L", "The CT was read on request"):
        expect(pg.get_by_text(note, exact=False).first).to_be_visible(timeout=30_000)  # type: ignore[attr-defined]
    assert pg.locator('[data-testid="stVegaLiteChart"]').count() == 1  # type: ignore[attr-defined]  # the survival chart
    # the charts below the viewer (every strategy, the attention strip), drawn once the viewer has the CT
    pg.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for(timeout=60_000)  # type: ignore[attr-defined]


def test_phi_dicom_zip_is_blocked_until_deidentified(page: object, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from tests import dicom_factory

    written = dicom_factory.write_series(tmp_path / "series", shape=(12, 48, 48))
    for f in (tmp_path / "series").iterdir():  # age and sex, which the basic profile removes from the study
        dicom_factory.edit_file(f, lambda ds: (setattr(ds, "PatientSex", "F"), setattr(ds, "PatientAge", "063Y")))
    zpath = tmp_path / "series.zip"
    zpath.write_bytes(dicom_factory.zip_folder(tmp_path / "series"))
    pg = page
    go(pg, "Upload")
    _upload(pg, zpath)
    assert pg.get_by_text("Blocked").count() >= 1  # type: ignore[attr-defined]
    assert pg.get_by_text("PatientName").count() >= 1  # type: ignore[attr-defined]
    assert pg.get_by_text("middle axial slice").count() == 0  # nothing shown before de-identification
    assert not pg.get_by_role("button", name="Save as a new case").is_enabled()  # type: ignore[attr-defined]
    shot(pg, "upload_phi_blocked")
    pg.get_by_role("button", name="De-identify and continue").click()  # type: ignore[attr-defined]
    settle(pg, 120)
    assert pg.get_by_text("De-identified").count() >= 1  # type: ignore[attr-defined]
    # the study's summary can be drawn by the run after the one settle() waited for (one CI-like run in four)
    expect(pg.get_by_text(re.compile(r"12 x 48 x 48")).first).to_be_visible(timeout=60_000)  # type: ignore[attr-defined]
    body = pg.content()  # type: ignore[attr-defined]
    for secret in dicom_factory.PHI_STRINGS:
        assert secret not in body
    assert written.hu.shape == (12, 48, 48)
    # the header's age and sex, read before de-identification, are offered as the case's clinical values
    offered = pg.get_by_text(re.compile(r"From the study's DICOM header: age 63, sex_female 1")).first  # type: ignore[attr-defined]
    expect(offered).to_be_visible(timeout=30_000)
    offered.scroll_into_view_if_needed()
    shot(pg, "upload_header_values")
    # the editor of the values: the header's two filled in, every other one blank (unknown: read as missing)
    columns, rows = grid_rows(pg.locator('[data-testid="stDataFrame"]').first)  # type: ignore[attr-defined]
    assert columns == ["clinical value", "value", "training (mean ± SD)"]
    values = {r[0]: r[1] for r in rows}
    assert values["age"] == "63" and values["sex_female"] == "1"
    assert [v for k, v in values.items() if k not in ("age", "sex_female")] == [""] * (len(values) - 2)


@pytest.mark.parametrize("name,data,needle", [
    ("random.nii.gz", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "Study not loaded"),
    ("empty.dcm", b"", "Study not loaded"),
    ("notes.zip", b"this is plain text, not a zip archive at all", "Study not loaded"),
], ids=["random-bytes-as-nii.gz", "empty-dcm", "text-as-zip"])  # the bytes would make a 4 kB test id
def test_bad_uploads_show_a_message_not_a_traceback(page: object, tmp_path: Path, name: str, data: bytes,
                                                   needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    pg = page
    go(pg, "Upload")
    _upload(pg, path)
    err = pg.locator('[data-testid="stAlertContentError"]')  # type: ignore[attr-defined]
    assert err.count() >= 1
    text = err.first.inner_text()
    assert needle in text and "Traceback" not in text and "fix:" in text


def test_download_saliency_png(page: object, tmp_path: Path) -> None:
    pg = page
    go(pg, "Export")
    prepare(pg, "Prepare the saliency figure")
    settle(pg, 180)
    shot(pg, "export")
    with pg.expect_download() as info:  # type: ignore[attr-defined]
        pg.get_by_role("button", name="Download PNG").click()  # type: ignore[attr-defined]
    download = info.value
    assert re.fullmatch(r"saliency_(?:case|demo)\d\d_[a-z]+_slice\d{3}\.png", download.suggested_filename)
    target = tmp_path / download.suggested_filename
    download.save_as(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_closed_tab_s_scratch_and_exports_are_removed_once_its_session_cannot_come_back(
        browser: object, server: str, data_dir: Path) -> None:
    """A closed tab's prepared exports (hundreds of MB at full resolution) and scratch folder stayed until Streamlit
    happened to drop its session (at another session's disconnect after the TTL, then at a garbage collection: on a
    quiet server not before a restart). They now go once the session is past Streamlit's TTL (here 5 s) and a grace."""
    from core.app import workspace

    scratch = data_dir / workspace.SCRATCH
    exports = workspace.user_exports_dir("local", base=data_dir)
    before = {p.name for p in scratch.glob(f"{workspace.WORKSPACE_PREFIX}*")}
    with opened_page(browser, server) as pg:
        go(pg, "Export")
        prepare(pg, "Prepare the saliency figure")
        settle(pg, 180)
        pg.get_by_role("button", name="Download PNG").wait_for(timeout=60_000)  # type: ignore[attr-defined]
        mine = [p for p in scratch.glob(f"{workspace.WORKSPACE_PREFIX}*") if p.name not in before]
        assert len(mine) == 1 and list((exports / mine[0].name / "figure").glob("*.png")), mine
        time.sleep(3 * SESSION_TTL_S)
        assert mine[0].is_dir(), "an open tab's folders stay, however long it sits idle"
    deadline = time.monotonic() + 3 * SESSION_TTL_S + 30
    while (mine[0].exists() or (exports / mine[0].name).exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not mine[0].exists() and not (exports / mine[0].name).exists(), "the closed tab's folders are still there"


def test_download_dicom_objects(page: object, tmp_path: Path) -> None:
    """Export: the Parametric Map, Segmentation and SR of the case come as one zip that reads back as DICOM."""
    import io
    import zipfile

    import pydicom

    pg = page
    go(pg, "Export")
    target = download(pg, "Prepare the DICOM objects", "Download the DICOM objects (zip)", tmp_path)
    assert re.fullmatch(r"dicom_(?:case|demo)\d\d_[a-z]+\.zip", target.name)
    with zipfile.ZipFile(target) as zf:
        names = set(zf.namelist())
        assert {"saliency_pm.dcm", "saliency_seg.dcm", "prediction_sr.dcm"} <= names
        pm = pydicom.dcmread(io.BytesIO(zf.read("saliency_pm.dcm")))
        seg = pydicom.dcmread(io.BytesIO(zf.read("saliency_seg.dcm")))
        sr = pydicom.dcmread(io.BytesIO(zf.read("prediction_sr.dcm")))
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and sr.Modality == "SR"  # Segmentation, SR
    assert pm.FrameOfReferenceUID == seg.FrameOfReferenceUID  # both on the source series' frame of reference


def test_download_map_nifti(page: object, tmp_path: Path) -> None:
    """Export: the whole map as NIfTI on the demo case's own grid, the map the overlay shows (non-zero, finite)."""
    import nibabel as nib

    pg = page
    go(pg, "Export")
    target = download(pg, "Prepare the map (NIfTI)", "Download the map (NIfTI)", tmp_path)
    assert re.fullmatch(r"saliency-map_(?:case|demo)\d\d_[a-z]+\.nii\.gz", target.name)
    img = nib.load(str(target))
    data = np.asarray(img.get_fdata())
    assert data.ndim == 3 and min(data.shape) >= 8 and np.isfinite(data).all() and float(np.abs(data).max()) > 0
    assert img.header.get_xyzt_units()[0] == "mm" and abs(float(np.linalg.det(img.affine[:3, :3]))) > 0


def test_other_pages_render(page: object) -> None:
    pg = page
    go(pg, "Cohort & models")
    # the test-split evaluation runs once as a background job (its progress bar shows meanwhile), then is kept
    pg.get_by_text("Harrell's C-index").first.wait_for(timeout=240_000)  # type: ignore[attr-defined]
    settle(pg, 300)
    for text in ("net benefit against the risk threshold", "Coverage of the uncertainty bounds", "Subgroups"):
        assert pg.get_by_text(text, exact=False).count() >= 1, text  # type: ignore[attr-defined]
    shot(pg, "cohort_models")
    # the model's report (PDF, made on the click): its test-split C-index as the page's tile shows it
    from tests.test_report import pdf_text

    with pg.expect_download() as info:  # type: ignore[attr-defined]
        pg.get_by_role("button", name="Model report (PDF)").first.click()  # type: ignore[attr-defined]
    tile = pg.locator('[data-testid="stMetric"]').filter(has_text="Harrell's C-index").first  # type: ignore[attr-defined]
    c_shown = tile.locator('[data-testid="stMetricValue"]').inner_text().strip()
    text = " ".join(pdf_text(Path(info.value.path()).read_bytes()).split("\n"))
    assert info.value.suggested_filename.startswith("model_report_") and ", test split" in text
    assert f"{c_shown} [" in text and "Cohort: the synthetic demo cohort. " in text, text[:500]
    # a laptop with the sidebar open (800 px): the four metrics two by two and whole, the two plots one under the other
    wide = pg.viewport_size  # type: ignore[attr-defined]
    pg.set_viewport_size({"width": 800, "height": wide["height"]})  # type: ignore[attr-defined]
    pg.wait_for_timeout(1000)  # type: ignore[attr-defined]
    assert pg.locator('[data-testid="stMetricLabel"]').count() >= 4  # type: ignore[attr-defined]
    assert cut_off(pg, '[data-testid="stMetricLabel"], [data-testid="stMetricValue"]') == []
    assert cut_off(pg, '[data-testid="stButton"] button') == []  # "Open in Case review" under its list, whole
    km, cal = (pg.get_by_text(t).first.bounding_box() for t in ("Kaplan-Meier by predicted risk group",  # type: ignore[attr-defined]
                                                                 "Calibration (predicted vs observed"))
    assert abs(km["x"] - cal["x"]) < 5 and cal["y"] > km["y"] + 200
    pg.set_viewport_size(wide)  # type: ignore[attr-defined]
    go(pg, "About")
    assert pg.get_by_text("not a medical device").count() >= 1  # type: ignore[attr-defined]
    shot(pg, "about")


def grid_rows(grid: object) -> tuple[list[str], list[list[str]]]:
    """A ``st.dataframe``'s column names and rows (a canvas: read from the grid's accessible table)."""
    columns = grid.evaluate("e => [...e.querySelectorAll('[role=columnheader]')].map(x => x.textContent)")  # type: ignore[attr-defined]
    cells = grid.evaluate("e => [...e.querySelectorAll('[role=gridcell]')].map(x => x.textContent)")  # type: ignore[attr-defined]
    return columns, [cells[i:i + len(columns)] for i in range(0, len(cells), len(columns))]


def plot_traces(chart: object) -> list[dict]:
    """A plotly chart's traces as the browser holds them: name, x, y and marker colours."""
    return chart.locator(".js-plotly-plot").evaluate(  # type: ignore[attr-defined]
        "p => p.data.map(t => ({name: t.name, y: t.y, x: t.x, colors: t.marker.color}))")


def upload_cohort_zip(pg: object, tmp_path: Path, tab: str, *, n: int, seed: int, split: bool = True,
                      name: str = "site", missing_study: bool = False) -> None:
    """A demo cohort of ``n`` new patients without CT (without its split column unless ``split``; with
    ``missing_study``, its first patient names a study the zip does not hold), zipped and uploaded on Cohort &
    models' ``tab``."""
    import shutil

    import pandas as pd

    from core.demo import write_demo_cohort

    src = write_demo_cohort(tmp_path / name, n=n, seed=seed, volumes=False)
    table = pd.read_csv(src / "cohort.csv")
    if not split:  # a hospital's cohort
        table = table.drop(columns=["split"])
    if missing_study:
        table["study"] = ["studies/absent.nii.gz"] + [""] * (n - 1)
    table.to_csv(src / "cohort.csv", index=False)
    archive = Path(shutil.make_archive(str(tmp_path / f"{name}_cohort"), "zip", src))
    go(pg, "Cohort & models")
    pg.get_by_role("tab", name=tab).click()  # type: ignore[attr-defined]
    panel = pg.locator('[data-testid="stMain"] [role="tabpanel"]:visible')  # type: ignore[attr-defined]
    panel.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(archive))
    settle(pg)


def test_external_validation_of_the_selected_model(page: object, tmp_path: Path, data_dir: Path) -> None:
    """Cohort & models, "Validate on your cohort": a zipped cohort of 60 new patients (no split column) is gated,
    evaluated on every patient as a background job, with the other models and per sex, and drawn with its risk
    groups. The models' forest plot holds the table's models in order with the table's C-index and IBS, the model
    in use in colour; columns that say nothing here (fusion = model name, one subjects / events) are left out. The
    subgroups' plot holds the table's groups and 1-year predicted / observed risks. Both plots' panel titles stay
    apart at 800 px."""
    import pandas as pd

    pg = page
    main = pg.locator('[data-testid="stMain"]')  # type: ignore[attr-defined]
    # a zip whose cohort.csv names a study it does not hold: said on upload, and the button waits
    upload_cohort_zip(pg, tmp_path, "Validate on your cohort", n=12, seed=9, name="broken", missing_study=True)
    said = main.locator('[class*="st-key-cohort_preview_validate"]').inner_text()
    assert "1 of 12 subjects name a study that is not in the zip" in said and "Patients\n\n12" in said, said
    assert main.get_by_role("button", name="Validate", exact=False).first.is_disabled()
    upload_cohort_zip(pg, tmp_path, "Validate on your cohort", n=60, seed=9, split=False)
    said = main.locator('[class*="st-key-cohort_preview_validate"]').inner_text()
    table = pd.read_csv(tmp_path / "site" / "cohort.csv")  # every patient evaluated: no splits said
    assert f"Patients\n\n60\n\nEvents\n\n{int(table['event'].sum())}\n" in said and "Splits" not in said, said
    assert "No CT studies; a timeline for 60" in said, said
    assert not main.get_by_role("button", name="Validate", exact=False).first.is_disabled()
    group_by = main.get_by_placeholder("e.g. sex, site, age")
    group_by.fill("sex_female")
    group_by.press("Enter")
    settle(pg)
    site = main.get_by_placeholder("site_cohort.zip")  # the site's name, the zip's file name until one is typed
    site.fill("Hospital  B 2025")
    site.press("Enter")
    settle(pg)
    main.get_by_text("Also the other 2 models").click()
    settle(pg)
    main.get_by_role("button", name="Validate", exact=False).first.click()
    main.get_by_text("Download the metrics (CSV)").first.wait_for(timeout=300_000)
    settle(pg)
    text = main.inner_text()
    assert "60 / " in text and "Kaplan-Meier by predicted risk group (your cohort)" in text, text[:2000]
    assert re.search(r"high risk \(n=20, \d+ events\)", text), text[:2000]
    shot(pg, "external_validation")
    # every model: the forest plot against the table
    assert "Every model on the same 60 subjects (" in text
    current = selected(pg, "Fusion strategy / model")  # the sidebar's model, validated first
    assert f"the model in use ({current}) in colour" in text
    panel = main.locator('[role="tabpanel"]:visible')  # the other tabs' plots and tables are in the page too
    forest = panel.locator('[data-testid="stPlotlyChart"]').filter(has_text="lower is better").first
    c_index, ibs = plot_traces(forest)[:2]
    columns, rows = grid_rows(panel.locator('[data-testid="stDataFrame"]').filter(
        has=pg.locator("[role=columnheader]", has_text="Uno C")).first)  # type: ignore[attr-defined]
    assert columns[:2] == ["model", "C-index [95% CI]"] and "fusion" not in columns and "n / events" not in columns
    assert c_index["name"] == "C-index" and ibs["name"] == "integrated Brier score"
    # image_only read nothing of this cohort without CT: named with the reason, not scored as a C of 0.5
    assert "Not in the comparison" in text and "read nothing of any of the 60 subjects evaluated" in text, text[:3000]
    assert len(c_index["y"]) == 2 and c_index["y"] == ibs["y"] == [r[0] for r in rows] and c_index["y"][0] == current
    assert "image_only" not in c_index["y"]
    assert [n for n, c in zip(c_index["y"], c_index["colors"]) if c != "rgb(110,110,110)"] == [current]
    for row, c, b in zip(rows, c_index["x"], ibs["x"]):  # each diamond is the table's value
        assert row[1].startswith(f"{c:.3f} [") and row[columns.index("IBS [95% CI]")].startswith(f"{b:.3f} ["), row
    # the best fusion against the better single-modality model on these patients: its difference is the table's
    c_of = dict(zip(c_index["y"], c_index["x"]))
    gain = re.search(r"Best fusion (\w+) against the best single-modality model (\w+) on the same 60 subjects: "
                     r"C-index ([+-]\d\.\d{3}) \(95 % CI [+-]\d\.\d{3} to [+-]\d\.\d{3}, paired bootstrap, p = [\d.e-]+\)",
                     panel.inner_text())
    assert gain is not None, panel.inner_text()[:3000]
    unimodal = max((n for n in ("image_only", "ehr_only") if n in c_of), key=c_of.__getitem__)
    assert gain.group(1) == next(n for n in c_of if n not in ("image_only", "ehr_only")) and gain.group(2) == unimodal
    assert abs(float(gain.group(3)) - (c_of[gain.group(1)] - c_of[unimodal])) < 1.5e-3
    # the selected model by sex: the same groups in the plot and the table, the plot's 1-year numbers the table's
    by_group = panel.locator('[data-testid="stPlotlyChart"]').filter(has_text="Risk at 1 year").first
    sub = plot_traces(by_group)
    columns, rows = grid_rows(panel.locator('[data-testid="stDataFrame"]').filter(
        has=pg.locator("[role=columnheader]", has_text="sex_female")).first)  # type: ignore[attr-defined]
    assert [t["name"] for t in sub] == ["C-index", "observed", "predicted"]
    assert [r[0] for r in rows] == ["0 (no)", "1 (yes)"] and sub[0]["y"] == [r[0] for r in rows if r[2] != "n/a"]
    year = columns.index("1 year (pred. / obs.)")
    pairs = {r[0]: r[year] for r in rows if r[year] != "n/a"}
    assert pairs and {y: f"{p:.2f} / {o:.2f}" for y, p, o in zip(sub[2]["y"], sub[2]["x"], sub[1]["x"])} == pairs
    # the patients of the site the validated model orders worst: listed, every one in a CSV summing to its C-index;
    # the cohort was removed after the job, so nothing to open in Case review: the user's own records
    said = panel.inner_text()
    assert "patients of the uploaded cohort the model orders worst" in said and "in your own records" in said, said[-3000:]
    assert panel.get_by_role("button", name="Open in Case review").count() == 0
    panel.get_by_text("patients of the uploaded cohort the model orders worst").scroll_into_view_if_needed()
    shot(pg, "external_validation_worst")
    with pg.expect_download() as info:  # type: ignore[attr-defined]
        panel.get_by_role("button", name="Every patient of the uploaded cohort: rank and pairs (CSV)").click()
    every = pd.read_csv(info.value.path(), dtype={"subject_id": str})
    assert sorted(every["subject_id"]) == sorted(table["subject_id"].astype(str))
    assert round(every["concordant"].sum() / every["comparable"].sum(), 3) == round(c_of[current], 3)
    # the report (PDF, made on the click): the forest plot's C-index of the validated model, no patient's id
    from tests.test_report import pdf_text

    with pg.expect_download() as info:  # type: ignore[attr-defined]
        panel.get_by_role("button", name="Validation report (PDF)").first.click()
    assert info.value.suggested_filename == f"validation_report_{current}_on_Hospital_B_2025.pdf"
    pdf = Path(info.value.path()).read_bytes()
    assert f"{c_of[current]:.3f} [" in pdf_text(pdf) and "Subgroups by sex_female" in pdf_text(pdf)
    assert "Cohort: Hospital B 2025. 60 patients" in pdf_text(pdf) and "site_cohort" not in pdf_text(pdf)
    assert not [i for i in table["subject_id"].astype(str) if i.encode() in pdf]
    from core.app.audit import read_audit  # the download audited where the file was made

    assert [r["details"]["models"] for r in read_audit(data_dir / "audit" / "audit.jsonl")
            if r["target"] == "validation_report"][-1:] == [3]
    # kept in the user's folder: listed after a reload, shown again with the same C-index, removed with one click
    pg.reload()  # type: ignore[attr-defined]
    settle(pg)
    pg.get_by_role("tab", name="Validate on your cohort").click()  # type: ignore[attr-defined]
    settle(pg)
    choose(pg, "Kept in your folder", "Hospital B 2025")
    settle(pg)
    assert selected(pg, "Kept in your folder").endswith(
        f" · {current} and 2 more on Hospital B 2025 (site_cohort.zip) · C {c_of[current]:.3f} · 60 patients")
    assert re.search(rf"{current} validated on Hospital B 2025 \(site_cohort.zip\) on 20\d\d-\d\d-\d\d \d\d:\d\d, beside \w+, \w+, "
                     "per group of sex_female.", panel.inner_text())
    panel.get_by_role("button", name="Remove", exact=True).click()
    settle(pg)
    assert "Earlier validations" not in panel.inner_text()
    # a laptop with the sidebar open (800 px): each plot's two panel titles still side by side, apart
    pg.set_viewport_size({"width": 800, "height": 1200})  # type: ignore[attr-defined]
    pg.wait_for_timeout(1500)  # type: ignore[attr-defined]
    for chart, titles in ((forest, ("Harrell's C-index", "Integrated Brier score")),
                          (by_group, ("Harrell's C-index", "Risk at 1 year"))):
        left, right = (chart.locator("text.annotation-text", has_text=t).first.bounding_box() for t in titles)
        assert left["x"] + left["width"] < right["x"] and abs(left["y"] - right["y"]) < 2, (left, right)


def test_train_every_strategy_on_an_uploaded_cohort_and_compare_per_cohort(page: object, tmp_path: Path,
                                                                           data_dir: Path) -> None:
    """Train on your cohort, "all 7, compared", on a cohort without CT (the last test of this module: it adds a
    model to the list, removed at the end, since the pytest worker's later modules share the demo's data folder).
    One job: ehr_only is trained and evaluated, the six strategies that read a CT are named with the reason; the
    model joins the sidebar's list. Compare strategies then keeps each cohort's models apart (the demo's, scored on
    the demo's test split, and this cohort's)."""
    from core.app import workspace

    folders = (workspace.user_models_dir("local", base=data_dir), workspace.user_root("local", base=data_dir) / "cohorts")
    before = {p for d in folders if d.is_dir() for p in d.iterdir()}
    try:
        _train_every_and_compare(page, tmp_path)
    finally:
        for p in {p for d in folders if d.is_dir() for p in d.iterdir()} - before:
            shutil.rmtree(p)


def _train_every_and_compare(pg: object, tmp_path: Path) -> None:
    import pandas as pd
    from playwright.sync_api import expect

    from core.models import FUSIONS

    upload_cohort_zip(pg, tmp_path, "Train on your cohort", n=48, seed=4)
    panel = pg.locator('[data-testid="stMain"] [role="tabpanel"]:visible')  # type: ignore[attr-defined]
    splits = pd.read_csv(tmp_path / "site" / "cohort.csv")["split"].value_counts()  # said before the Train button
    assert (f"Splits: train {splits['train']}, val {splits['val']}, test {splits['test']}; no CT studies; a timeline "
            "for 48") in panel.locator('[class*="st-key-cohort_preview_train"]').inner_text()
    every = f"all {len(FUSIONS)}, compared"
    panel.locator('[data-testid="stSelectbox"]').filter(has_text="Fusion strategy").locator('[role="combobox"]').click()
    pg.locator('[role="option"]').filter(has_text=every).first.click()  # type: ignore[attr-defined]
    settle(pg)
    epochs = panel.locator('input[type="number"]').first
    epochs.fill("1")
    epochs.press("Enter")
    settle(pg)
    wide = pg.viewport_size  # type: ignore[attr-defined]
    pg.set_viewport_size({"width": 800, "height": wide["height"]})  # type: ignore[attr-defined]
    settle(pg)  # the upload's tiles keep their labels whole at 800 px ("Median follow-up" was cut there)
    assert cut_off(pg, '[class*="st-key-cohort_preview_train"] [data-testid="stMetricLabel"]') == []
    panel.get_by_role("button", name=f"Train all {len(FUSIONS)} and compare").click()
    # while it runs: the job's bar with its Cancel button, whose label is whole at 800 px beside the open sidebar
    # (in columns of 6:1 it read "Ca...")
    cancel = panel.get_by_role("button", name="Cancel")
    cancel.wait_for(timeout=60_000)
    assert cut_off(pg, '[class*="st-key-cancel_"]') == []
    pg.set_viewport_size(wide)  # type: ignore[attr-defined]
    expect(panel.get_by_text(f"Trained 1 of {len(FUSIONS)} strategies", exact=False)).to_be_visible(timeout=300_000)
    settle(pg)
    shot(pg, "train_every_strategy")
    assert re.search(r"Test C-index 0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]", panel.inner_text())  # the one trained
    notice = panel.locator('[data-testid="stAlertContainer"]').filter(has_text="Not in the comparison").inner_text()
    refused = [f for f in FUSIONS if f != "ehr_only"]  # every strategy that reads a CT, on one line with the reason
    assert notice.split(" (your cohort, ")[0].endswith("Not in the comparison:\n\n" + ", ".join(refused)), notice
    assert notice.count("needs images but the cohort has none") == 1
    go(pg, "Cohort & models")  # the sidebar's list now has the new model
    pg.locator('[data-testid="stSidebar"] [role="combobox"]').first.click()  # type: ignore[attr-defined]
    listed = pg.locator('[role="option"]').all_inner_texts()  # type: ignore[attr-defined]
    pg.keyboard.press("Escape")  # type: ignore[attr-defined]
    assert [o for o in listed if "(your cohort" in o] == [o for o in listed if o.startswith("ehr_only (your cohort, ")]
    assert len(listed) == 4, listed
    pg.get_by_role("tab", name="Compare strategies").click()  # type: ignore[attr-defined]
    settle(pg)
    panel = pg.locator('[data-testid="stMain"] [role="tabpanel"]:visible')  # type: ignore[attr-defined]
    assert selected(panel, "Models trained on") == "the demo cohort (3 models)"  # the model in use is the demo's
    panel.locator('[data-testid="stSelectbox"]').filter(has_text="Models trained on").locator('[role="combobox"]').click()
    options = pg.locator('[role="option"]').all_inner_texts()  # type: ignore[attr-defined]
    assert options[0] == "the demo cohort (3 models)" and re.fullmatch(r"your cohort uploaded \d\d \w{3} \d\d:\d\d \(1 model\)",
                                                                        options[1]), options
    pg.locator('[role="option"]').nth(1).click()  # type: ignore[attr-defined]
    settle(pg)
    expect(panel.get_by_text("was trained on this cohort: its metrics are on the Selected model tab",
                             exact=False)).to_be_visible()


def test_a_training_a_restart_stopped_is_started_again_from_the_sidebar(page: object, data_dir: Path,
                                                                        tmp_path: Path) -> None:
    """A training of an upload, stopped by a server restart once its cohort was unpacked (a record of a server with no
    heartbeat): the sidebar says its cohort is kept; "Start again" trains it with its settings into the model folder
    it was writing, its progress where the notice was, and the notice is gone."""
    from playwright.sync_api import expect

    from core.app import job_journal, job_restart, workspace
    from core.app.background import TRAINED_MARKER, train_uploaded_job, unpack_gated
    from core.demo import write_demo_cohort
    from core.jobs import JobContext

    pg = page
    user = workspace.user_root("local", data_dir)
    archive = Path(shutil.make_archive(str(tmp_path / "c"), "zip", write_demo_cohort(tmp_path / "src", n=48, seed=8,
                                                                                      volumes=False)))
    data, out = archive.read_bytes(), user / "models" / "ehr_only-restarted"
    queued = time.time() - 4
    unpack_gated(JobContext(lambda f, m: None, lambda: False), data, str(user / "cohorts"), "tag42")
    job_journal._write(user / "jobs" / "deadbeef0002-job1.json", {
        "title": "Training ehr_only", "queued_at": queued, "server": "deadbeef0002", "upload": True,
        "restart": job_restart.spec(train_uploaded_job, (data, str(user / "cohorts"), "ehr_only", str(out), 2),
                                    {"label": "ehr_only (restarted)", "tag": "tag42"}, "train-restarted")})
    go(pg, "Cohort & models")
    side = pg.locator('[data-testid="stSidebar"]')  # type: ignore[attr-defined]
    notice = side.locator('[data-testid="stAlertContainer"]').filter(has_text="stopped when the server restarted")
    assert notice.inner_text().endswith("; the cohort it unpacked is kept to start it again. Start it again with the "
                                        "same settings."), notice.inner_text()
    side.get_by_role("button", name="Start again").click()
    deadline = time.monotonic() + 180
    while not (out / TRAINED_MARKER).is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert (out / TRAINED_MARKER).is_file(), "the training started again did not finish"
    # the model folder is written a moment before the job ends; the box goes at the page's next look (2 s polls)
    expect(side.get_by_text("Started again after the server's restart")).to_have_count(0, timeout=60_000)
    settle(pg)
    assert notice.count() == 0
    go(pg, "Cohort & models")
    pg.locator('[data-testid="stSidebar"] [role="combobox"]').first.click()  # type: ignore[attr-defined]
    listed = pg.locator('[role="option"]').all_inner_texts()  # type: ignore[attr-defined]
    pg.keyboard.press("Escape")  # type: ignore[attr-defined]
    assert "ehr_only (restarted)" in listed, listed
    assert list((user / "jobs").glob("deadbeef0002-*.json")) == []
    # the model and its cohort go: the modules that share this demo folder list the user's cohorts' patients first
    from core.app.background import delete_trained_model

    removed = delete_trained_model(user / "models", out, user / "cohorts")
    assert len(removed) == 2 and not any(p.exists() for p in removed)
