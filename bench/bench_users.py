"""K users at once in real Chromium sessions against one app server on loopback.

Starts ``streamlit run app.py`` on a copy-free data folder (``--data``, a built
demo: ``CTEHR_DATA_DIR=DIR python -c "from core.app.demo_install import
ensure_demo; ensure_demo()"``), opens one Debian Chromium with ``--users``
isolated contexts (each its own Streamlit session) and for ``--seconds`` lets
every user:

* open Case review and wait for the CT viewer (NiiVue) to load (the time is
  reported; the ``--seconds`` of scrolling count from then, per user);
* scroll slices with the mouse wheel over the axial plane (a notch every
  150-400 ms): **slice change** latency is measured inside the page, from the
  wheel event's timestamp to the first animation frame after the viewer
  redrew (what the user sees);
* every ``--overlay-every`` seconds toggle the saliency overlay: **overlay**
  latency is the wall time from the click until the map volume is shown
  (the first time per case this includes computing the map in the
  background job queue);

while, optionally, user 1 uploads the shared real CT on the Upload page
(``--upload``) and user 2 trains a model on a small cohort zip
(``--train-zip``; slice latencies taken while a training job runs are
reported apart). Errors: page errors, Streamlit exception boxes and failed
steps. Peak memory: the server process and its children (the job processes),
sampled every 0.5 s. CPU: seconds used by the server (and its job processes)
and by Chromium's processes by kind (renderers, the GPU process that runs the
software WebGL, the browser), while the pages open (until every viewer is
loaded) and after. Per user, how many times the viewer got the CT's or a
map's bytes (once per volume when the component's cache works).

    python bench/bench_users.py --data DIR [--users 8] [--seconds 180] [--port 8650]
                                [--upload ../shared/data/ct/example_ct_sm.nii.gz] [--train-zip cohort.zip]

Prints p50/p95 per kind and one JSON line (``--json``) for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

LISTEN_JS = """() => {
  if (window._benchLat) return;
  window._benchLat = [];
  // on the window, not the canvas: the viewer may rebuild its canvas when the page reruns
  window.addEventListener('wheel', (ev) => {
    const st = window.ctehrViewer, t = ev.timeStamp, d0 = st ? st.draws : 0;
    const wait = () => { const s = window.ctehrViewer;
      if (s && s.draws > d0) requestAnimationFrame(() => window._benchLat.push(performance.now() - t));
      else if (performance.now() - t < 10000) requestAnimationFrame(wait); };
    requestAnimationFrame(wait);
  }, {capture: true});
}"""
TILE_JS = """async () => { const nv = window.ctehrViewer.nv, d = nv.uiData.dpr || 1;
  for (let i = 0; i < 300; i++) {  // the tiles' layout exists once the viewer has drawn a frame
    const s = nv.screenSlices.find((x) => x.axCorSag === 0);
    if (s) return s.leftTopWidthHeight.map((v) => v / d);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the viewer drew no axial tile within 30 s"); }"""


VIEWER_COUNTS_JS = """() => { const s = window.ctehrViewer;
  return {received: s.received, received_kb: Math.round(s.receivedBytes / 1024), renders: s.renders, draws: s.draws}; }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pctl(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(rss.get(p, 0) for p in tree)


class MemoryWatch(threading.Thread):
    """Peak resident memory of a process and its children (the job processes), sampled every 0.5 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, False

    def run(self) -> None:
        while not self.stop and Path(f"/proc/{self.pid}").exists():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.5)


def _ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


def _kind(pid: int, server_tree: set[int], own_tree: set[int], server_pid: int) -> str | None:
    """``server`` (the app), ``server-jobs`` (its job processes: training), ``chromium-<type>`` (this bench's
    browser) or None."""
    if pid in server_tree:
        return "server" if pid == server_pid else "server-jobs"
    if pid not in own_tree:
        return None  # another program's process (say another Chromium on the same machine)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()  # Chromium rewrites its title
    except OSError:
        return None
    if not cmd or not cmd[0].endswith(b"chromium") and b"/chromium" not in cmd[0]:
        return None
    for arg in cmd:
        if arg.startswith(b"--type="):
            return "chromium-" + arg[7:].decode(errors="replace")
    return "chromium-browser"


class CpuWatch(threading.Thread):
    """CPU seconds per kind of process (see ``_kind``), split into phases (``phase`` is read at each sample)."""

    def __init__(self, server_pid: int, phase: Any) -> None:
        super().__init__(daemon=True)
        self.server_pid, self.phase, self.stop = server_pid, phase, False
        self.used: dict[str, dict[str, float]] = {}   # phase -> kind -> CPU seconds
        self.wall: dict[str, float] = {}              # phase -> seconds sampled
        self._last: dict[int, int] = {}
        self._kinds: dict[int, str | None] = {}

    def _trees(self) -> tuple[set[int], set[int]]:
        """The server's process tree and this bench's (its Playwright driver and Chromium), the server's excluded."""
        parents: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        def tree_of(root: int, skip: set[int]) -> set[int]:
            tree, frontier = {root}, [root]
            while frontier:
                p = frontier.pop()
                kids = [c for c, pp in parents.items() if pp == p and c not in tree and c not in skip]
                tree.update(kids)
                frontier.extend(kids)
            return tree

        server = tree_of(self.server_pid, set())
        return server, tree_of(os.getpid(), server)

    def run(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        last_t = time.monotonic()
        while not self.stop:
            time.sleep(1.0)
            phase, now = str(self.phase()), time.monotonic()
            self.wall[phase] = self.wall.get(phase, 0.0) + now - last_t
            last_t = now
            tree, own = self._trees()
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                pid = int(d.name)
                if pid not in self._kinds or pid in tree or pid in own:
                    self._kinds[pid] = _kind(pid, tree, own, self.server_pid)
                kind = self._kinds[pid]
                ticks = _ticks(pid) if kind else None
                if kind is None or ticks is None:
                    continue
                before = self._last.get(pid, ticks)  # a process seen for the first time counts from now
                self._last[pid] = ticks
                bucket = self.used.setdefault(phase, {})
                bucket[kind] = bucket.get(kind, 0.0) + (ticks - before) / hz

    def summary(self) -> dict[str, Any]:
        return {phase: {"wall_s": round(self.wall.get(phase, 0.0), 1),
                        "cpu_s": {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}}
                for phase, kinds in self.used.items()}


class Stats:
    def __init__(self, users: int) -> None:
        self.users = users
        self.samples: list[tuple[float, float]] = []  # (wall-clock time read, slice-change ms)
        self.slice_idle: list[float] = []
        self.slice_training: list[float] = []
        self.overlay: list[float] = []
        self.open: list[float] = []
        self.errors: list[str] = []
        self.training: list[tuple[float, float]] = []  # wall-clock spans with a training job running
        self.notes: list[str] = []
        self.viewer: list[dict[str, Any]] = []  # per user at the end: volumes received with bytes, renders
        self.all_open_at = float("inf")  # wall-clock time when the last user's viewer had loaded

    def training_at(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.training)

    def split(self) -> None:
        """Slice-change samples taken while a training job ran, and the others (spans known at the end)."""
        for t, v in self.samples:
            (self.slice_training if self.training_at(t) else self.slice_idle).append(v)


async def viewer_frame(pg: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for fr in pg.frames:
            if "ctehr_ct_viewer" in fr.url:
                try:
                    if await fr.evaluate("() => !!(window.ctehrViewer && window.ctehrViewer.loaded)"):
                        return fr
                except Exception as exc:
                    if "detached" not in str(exc) and "destroyed" not in str(exc):
                        raise
        await asyncio.sleep(0.25)
    raise TimeoutError("the CT viewer did not load")


async def exceptions_on(pg: Any) -> int:
    return await pg.locator("[data-testid=stException]").count()


async def scroll_user(i: int, ctx: Any, base: str, stats: Stats, end: float, seconds: float, overlay_every: float) -> None:
    pg = await ctx.new_page()
    pg.on("pageerror", lambda err: stats.errors.append(f"user {i}: page error {str(err)[:120]}"))
    t0 = time.perf_counter()
    await pg.goto(base + "/", timeout=180000)
    fr = await viewer_frame(pg)
    stats.open.append(time.perf_counter() - t0)
    if len(stats.open) == stats.users:
        stats.all_open_at = time.time()
    end = max(end, time.monotonic() + seconds)  # every user scrolls ``seconds`` once its viewer is open
    await fr.evaluate(LISTEN_JS)
    box = await fr.locator("#gl").bounding_box()
    l, t, w, h = await fr.evaluate(TILE_JS)
    x, y = box["x"] + l + w / 2, box["y"] + t + h / 2
    direction, next_overlay, overlay_on = -120, time.monotonic() + overlay_every * random.random(), False
    rng = random.Random(i)
    steps = 0
    while time.monotonic() < end:
        await pg.mouse.move(x, y)
        await pg.mouse.wheel(0, direction)
        steps += 1
        if steps % 12 == 0:
            direction = -direction
        await asyncio.sleep(rng.uniform(0.15, 0.4))
        try:
            lat = await fr.evaluate("() => (window._benchLat || []).splice(0)")
            if steps % 10 == 0:
                await fr.evaluate(LISTEN_JS)  # again, should the frame's document have been replaced
        except Exception as exc:
            if "detached" not in str(exc) and "destroyed" not in str(exc):
                raise
            fr = await viewer_frame(pg)
            await fr.evaluate(LISTEN_JS)
            lat = []
        now = time.time()
        stats.samples.extend((now, float(v)) for v in lat)
        if time.monotonic() >= next_overlay:
            next_overlay = time.monotonic() + overlay_every
            t1 = time.perf_counter()
            await pg.get_by_text("Saliency overlay", exact=True).click()
            overlay_on = not overlay_on
            if overlay_on:
                try:
                    fr = await overlay_shown(pg, time.monotonic() + 120)
                    stats.overlay.append(time.perf_counter() - t1)
                except TimeoutError:
                    stats.errors.append(f"user {i}: overlay not shown within 120 s")
                    fr = await viewer_frame(pg)
            else:
                fr = await viewer_frame(pg)
            await fr.evaluate(LISTEN_JS)
            box = await fr.locator("#gl").bounding_box()
            l, t, w, h = await fr.evaluate(TILE_JS)
            x, y = box["x"] + l + w / 2, box["y"] + t + h / 2
        if steps % 20 == 0 and await exceptions_on(pg):
            stats.errors.append(f"user {i}: an exception box on Case review")
            break
    try:
        stats.viewer.append(await fr.evaluate(VIEWER_COUNTS_JS))
    except Exception as exc:  # noqa: BLE001 - the frame was replaced at the very end: no counts for this user
        stats.notes.append(f"user {i}: viewer counts not read ({str(exc)[:80]})")
    await pg.close()


async def overlay_shown(pg: Any, deadline: float) -> Any:
    while time.monotonic() < deadline:
        for fr in pg.frames:
            if "ctehr_ct_viewer" in fr.url:
                try:
                    ok = await fr.evaluate("() => { const nv = window.ctehrViewer && window.ctehrViewer.nv; "
                                           "return !!(nv && nv.volumes.length > 1 && nv.volumes[1].opacity > 0); }")
                except Exception as exc:
                    if "detached" not in str(exc) and "destroyed" not in str(exc):
                        raise
                    ok = False
                if ok:
                    return fr
        await asyncio.sleep(0.2)
    raise TimeoutError("overlay")


async def upload_user(ctx: Any, base: str, study: Path, stats: Stats) -> None:
    pg = await ctx.new_page()
    pg.on("pageerror", lambda err: stats.errors.append(f"uploader: page error {str(err)[:120]}"))
    t0 = time.perf_counter()
    await pg.goto(base + "/upload", timeout=180000)
    await pg.locator("input[type=file]").first.set_input_files(str(study), timeout=180_000)
    await asyncio.sleep(20)
    if await exceptions_on(pg):
        stats.errors.append("uploader: an exception box on Upload")
    stats.notes.append(f"upload of {study.name} checked in {time.perf_counter() - t0:.1f} s (page shown)")
    await pg.close()


async def train_user(ctx: Any, base: str, zip_path: Path, data: Path, stats: Stats, end: float) -> None:
    pg = await ctx.new_page()
    pg.on("pageerror", lambda err: stats.errors.append(f"trainer: page error {str(err)[:120]}"))
    before = {p.name for p in (data / "users").glob("*/models/*")}  # models of earlier runs
    await pg.goto(base + "/cohort_models", timeout=180000)
    await pg.get_by_role("tab", name="Train on your cohort").click()
    await pg.locator("input[type=file]").first.set_input_files(str(zip_path), timeout=180_000)
    await asyncio.sleep(3)
    await pg.get_by_role("button", name="Train", exact=True).click(timeout=180_000)
    start = time.time()
    stats.training.append((start, float("inf")))  # until it is seen to end
    while time.monotonic() < end:
        models = [p for p in (data / "users").glob("*/models/*") if p.name not in before]
        if models and not any(p.name.endswith(".partial") for p in models):
            stats.training[-1] = (start, time.time())
            stats.notes.append(f"training finished after {time.time() - start:.0f} s")
            break
        await asyncio.sleep(2)
    else:
        stats.training[-1] = (start, time.time())
        stats.notes.append("training still running at the end")
    if await exceptions_on(pg):
        stats.errors.append("trainer: an exception box on Cohort & models")
    await pg.close()


async def stamped(coro: Any, who: str, t0: float) -> Any:
    """``coro``'s result; an exception it raises says whose it was and when (seconds since the users started)."""
    try:
        return await coro
    except Exception as exc:
        exc.bench_at = f"{who}, {time.monotonic() - t0:.0f} s after the start"  # type: ignore[attr-defined]
        raise


async def run(args: argparse.Namespace, base: str, stats: Stats) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        contexts = [await browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(args.users)]
        end = time.monotonic() + args.seconds
        tasks = []
        t0 = time.monotonic()
        for i, ctx in enumerate(contexts):
            tasks.append(stamped(scroll_user(i, ctx, base, stats, end, args.seconds, args.overlay_every), f"user {i}", t0))
        if args.upload is not None:
            tasks.append(stamped(upload_user(await browser.new_context(), base, args.upload, stats), "uploader", t0))
        if args.train_zip is not None:
            tasks.append(stamped(train_user(await browser.new_context(), base, args.train_zip, args.data, stats, end + 300),
                                 "trainer", t0))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                stats.errors.append(f"{type(r).__name__}: {str(r).splitlines()[0][:160] if str(r) else ''}"
                                    f" ({getattr(r, 'bench_at', '?')})")
        await browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="app data folder with a built demo (CTEHR_DATA_DIR)")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--overlay-every", type=float, default=40.0, help="seconds between overlay toggles per user")
    ap.add_argument("--upload", type=Path, default=None, help="a study one extra user uploads")
    ap.add_argument("--train-zip", type=Path, default=None, help="a cohort zip one extra user trains on")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"needs Debian chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    port = args.port or free_port()
    env = dict(os.environ, CTEHR_DATA_DIR=str(args.data))
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.headless", "true"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    watch = MemoryWatch(server.pid)
    watch.start()
    stats = Stats(args.users)
    cpu = CpuWatch(server.pid, lambda: "pages opening" if len(stats.open) < args.users else "all viewers open")
    cpu.start()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        base = f"http://127.0.0.1:{port}"
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        asyncio.run(run(args, base, stats))
        stats.split()
    finally:
        watch.stop = cpu.stop = True
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    result: dict[str, Any] = {
        "command": "python bench/bench_users.py " + " ".join(sys.argv[1:]),
        "users": args.users, "seconds": args.seconds, "cores": os.cpu_count(), "load_before": load_before,
        "wall_s": round(time.perf_counter() - t0, 1),
        "slice_ms_idle": {"n": len(stats.slice_idle), "p50": pctl(stats.slice_idle, 50), "p95": pctl(stats.slice_idle, 95)},
        "slice_ms_training": {"n": len(stats.slice_training), "p50": pctl(stats.slice_training, 50),
                              "p95": pctl(stats.slice_training, 95)},
        "slice_ms_idle_by_phase": {
            phase: {"n": len(v), "p50": pctl(v, 50), "p95": pctl(v, 95)}
            for phase, v in (("pages opening", [x for t, x in stats.samples if t < stats.all_open_at
                                                 and not stats.training_at(t)]),
                             ("all viewers open", [x for t, x in stats.samples if t >= stats.all_open_at
                                                   and not stats.training_at(t)]))},
        "overlay_s": {"n": len(stats.overlay), "p50": pctl(stats.overlay, 50), "p95": pctl(stats.overlay, 95)},
        "open_s": {"n": len(stats.open), "median": statistics.median(stats.open) if stats.open else None},
        "errors": stats.errors, "notes": stats.notes, "peak_server_mb": round(watch.peak / 2**20),
        "cpu": cpu.summary(), "viewer_counts": stats.viewer, "load_after": os.getloadavg(),
    }
    for kind in ("slice_ms_idle", "slice_ms_training", "overlay_s", "open_s"):
        print(kind, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result[kind].items()})
    print("errors", len(stats.errors), stats.errors[:10])
    print("notes", stats.notes, "peak server+jobs memory", result["peak_server_mb"], "MB")
    print("slice_ms_idle by phase", {k: {kk: (round(vv, 1) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                                     for k, v in result["slice_ms_idle_by_phase"].items()})
    for phase, row in result["cpu"].items():
        print("cpu", phase, row)
    print("viewer: volumes received with bytes per user", [v.get("received") for v in stats.viewer],
          "renders", [v.get("renders") for v in stats.viewer])
    print("load average before", [round(v, 2) for v in load_before], "after", [round(v, 2) for v in os.getloadavg()])
    if args.json:
        print(json.dumps(result))
    return 0 if not stats.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
