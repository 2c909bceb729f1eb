"""Cold and warm start of the app, as a browser sees them, beside a static page of the same size (issue 18).

* **cold**: a fresh, empty data folder: ``streamlit run app.py`` is started and Debian's Chromium opens
  the app; the clock runs from the server's launch until Case review shows the CT viewer with its
  volume loaded and the survival curve drawn (the first start installs the shipped demo models and
  writes the demo cohort on the way);
* **warm**: the server stopped and started again on the same folder, measured the same way;
* **reference**: a plain static page (``python -m http.server``) holding as many bytes as the warm app
  sent the browser (HTTP bodies and WebSocket frames), from the server's launch until its load event.

    python bench/bench_startup.py [--data DIR (default: a new temp folder)] [--repeats 3]

Targets: cold <= 60 s, warm <= 5 s. Prints one JSON line, with the milestones of each start read in the browser
(seconds from the launch): ``health`` (the server answers), ``frontend`` (Streamlit's page is up), ``title`` (the
first script run has drawn Case review's title), ``viewer_frame`` (the viewer's iframe), ``survival_curve`` (the case's
survival chart, Vega-Lite), ``ct_loaded`` (NiiVue holds the CT), and after the ready moment ``charts_below`` (the charts below the
viewer, which on a session's first view wait until the viewer has loaded the CT).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
READY_JS = """() => {
  const curve = !!document.querySelector('[data-testid=stVegaLiteChart] canvas, [data-testid=stVegaLiteChart] svg');
  const fr = Array.from(document.querySelectorAll('iframe')).find((f) => (f.src || '').includes('ctehr_ct_viewer'));
  let loaded = false;
  try { loaded = !!(fr && fr.contentWindow.ctehrViewer && fr.contentWindow.ctehrViewer.loaded); } catch (e) { loaded = false; }
  return curve && loaded;
}"""
MILESTONES_JS = """(() => { window.__ctehrMs = {};
  const mark = (k) => { if (!(k in window.__ctehrMs)) window.__ctehrMs[k] = Date.now() / 1000; };
  const tick = () => {
    if (document.querySelector('[data-testid=stApp]')) mark('frontend');
    if (Array.from(document.querySelectorAll('h1')).some((e) => e.textContent.includes('Case review'))) mark('title');
    const fr = Array.from(document.querySelectorAll('iframe')).find((f) => (f.src || '').includes('ctehr_ct_viewer'));
    if (fr) { mark('viewer_frame'); try { if (fr.contentWindow.ctehrViewer && fr.contentWindow.ctehrViewer.loaded) mark('ct_loaded'); } catch (e) {} }
    if (document.querySelector('[data-testid=stVegaLiteChart] canvas, [data-testid=stVegaLiteChart] svg')) mark('survival_curve');
    const text = document.body ? document.body.innerText : '';
    if (document.querySelectorAll('.js-plotly-plot').length > 0 && !text.includes('appear once the CT viewer')) mark('charts_below');
    if (!('ct_loaded' in window.__ctehrMs && 'survival_curve' in window.__ctehrMs && 'charts_below' in window.__ctehrMs)) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick); })();"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def app_start(data: Path, timeout: float) -> tuple[float, int, dict[str, float]]:
    """Seconds from launching the server to Case review ready in Chromium; bytes the browser received; milestones."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, CTEHR_DATA_DIR=str(data))
    t0 = time.perf_counter()
    wall0 = time.time()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.headless", "true"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    received = [0]
    milestones: dict[str, float] = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", timeout)
        milestones["health"] = time.perf_counter() - t0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})

            def on_ws(ws: Any) -> None:
                ws.on("framereceived", lambda payload: received.__setitem__(0, received[0] + len(payload)))

            def on_response(resp: Any) -> None:
                try:
                    received[0] += len(resp.body())
                except PlaywrightError:  # a redirect or an aborted response has no body to count
                    return

            page.add_init_script(MILESTONES_JS)
            page.on("websocket", on_ws)
            page.on("response", on_response)
            page.goto(f"http://127.0.0.1:{port}/", timeout=int(timeout * 1000))
            page.wait_for_function(READY_JS, timeout=int(timeout * 1000), polling=200)
            elapsed = time.perf_counter() - t0
            # not part of the start: the charts below the viewer (drawn once it has loaded), timed for the record
            page.wait_for_function("() => window.__ctehrMs && 'charts_below' in window.__ctehrMs",
                                   timeout=int(timeout * 1000), polling=200)
            page.wait_for_timeout(300)  # the last requestAnimationFrame marks
            for name, at in page.evaluate("window.__ctehrMs").items():
                milestones[name] = float(at) - wall0
            browser.close()
        return elapsed, received[0], {k: round(v, 2) for k, v in sorted(milestones.items(), key=lambda kv: kv[1])}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def static_start(n_bytes: int) -> float:
    """Seconds from launching ``python -m http.server`` to the load event of a page of ``n_bytes``."""
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="ctehr-static-"))
    filler = "x" * max(n_bytes - 200, 0)
    (folder / "index.html").write_text(f"<!doctype html><html><body><h1>Case review</h1><div hidden>{filler}</div>"
                                       "</body></html>")
    port = free_port()
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            elapsed = time.perf_counter() - t0
            browser.close()
        return elapsed
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="an empty or absent folder for the cold start")
    ap.add_argument("--repeats", type=int, default=3, help="warm starts (and static pages) to time")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"needs Debian chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    data = args.data or Path(tempfile.mkdtemp(prefix="ctehr-startup-"))
    if data.exists() and any(data.iterdir()):
        print(f"--data {data} is not empty: a cold start needs an empty folder", file=sys.stderr)
        return 2
    load = os.getloadavg()
    cold, _, cold_ms = app_start(data, args.timeout)
    warm_runs = [app_start(data, args.timeout) for _ in range(args.repeats)]
    warm = [w for w, _, _ in warm_runs]
    n_bytes = int(statistics.median(b for _, b, _ in warm_runs))
    static = [static_start(n_bytes) for _ in range(args.repeats)]
    out = {"command": "python bench/bench_startup.py " + " ".join(sys.argv[1:]), "cores": os.cpu_count(),
           "load_before": load, "cold_s": round(cold, 2), "warm_s": [round(w, 2) for w in warm],
           "warm_median_s": round(statistics.median(warm), 2), "bytes_to_browser": n_bytes,
           "cold_milestones_s": cold_ms, "warm_milestones_s": [m for _, _, m in warm_runs],
           "static_same_size_s": [round(s, 2) for s in static],
           "warm_over_static": round(statistics.median(warm) / statistics.median(static), 1)}
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))
    if args.data is None:
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
