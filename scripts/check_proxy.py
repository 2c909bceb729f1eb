"""Run docs/DEPLOYMENT.md's nginx configuration for real in front of this app, and check what the document promises.

The ``nginx`` block of docs/DEPLOYMENT.md (section 5) is taken as written; only the certificate paths (a self-signed
certificate for ct.example.org made here) and the upstream port (the Streamlit started here) are replaced. nginx
listens on this machine's ports 443 and 80, so run it as root on a machine where they are free (a test host, not the
deployment). Checks, each printed with its result:

* ``/_stcore/metrics`` answers 404 through the proxy;
* a TLS handshake for another name (DNS rebinding, scanners) is refused, and port 80 gives no answer to another Host;
* port 80 redirects ct.example.org to https;
* a WebSocket upgrade whose Origin is another site gets 403, ours 101;
* the security headers (HSTS, CSP, X-Frame-Options, nosniff, Referrer-Policy) are on the page;
* in headless Chromium (``--host-resolver-rules`` maps ct.example.org to this machine): Case review opens with the CT
  in its viewer (a component page of this server in an iframe) and no exception, and the browser reports no
  Content-Security-Policy violation; the shared real CT uploaded through the proxy is read (Upload's outcome line);
  a page of another site that frames the app shows nothing of it.

Usage: ``sudo python scripts/check_proxy.py [--data DIR] [--ct ../shared/data/ct/example_ct_sm.nii.gz]``; exit
status 1 when a check fails. Needs nginx 1.19.4 or later, openssl, and Debian's chromium with Python playwright.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "ct.example.org"
CHROMIUM = "/usr/bin/chromium"


def nginx_block(doc: Path) -> str:
    """The ``nginx`` fenced block of the deployment document."""
    found = re.search(r"```nginx\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    if found is None:
        raise SystemExit(f"{doc}: no ```nginx block")
    return found.group(1)


def write_config(block: str, folder: Path, upstream_port: int) -> Path:
    """nginx.conf for ``nginx -c``: the document's block inside an ``http`` block, logs and temp files in ``folder``."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    body = (block.replace("/etc/ssl/ctehr/fullchain.pem", str(cert)).replace("/etc/ssl/ctehr/privkey.pem", str(key))
            .replace("server 127.0.0.1:8501;", f"server 127.0.0.1:{upstream_port};"))
    conf = folder / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{}}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
{body}
}}
""")
    return conf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"nothing answered on 127.0.0.1:{port}{path} within {timeout_s:.0f} s")


def https(path: str, *, sni: str = NAME, host: str = NAME, headers: dict[str, str] | None = None,
          ) -> http.client.HTTPResponse:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed, made above
    raw = socket.create_connection(("127.0.0.1", 443), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=sni)
    conn = http.client.HTTPSConnection(NAME, 443, timeout=10, context=ctx)
    conn.sock = sock
    conn.request("GET", path, headers={"Host": host, **(headers or {})})
    return conn.getresponse()


def plain(path: str, host: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    return conn.getresponse()


def websocket(origin: str) -> int:
    response = https("/_stcore/stream", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                 "Sec-WebSocket-Version": "13",
                                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": origin})
    return int(response.status)


def browser_checks(ct: Path | None, shots: Path) -> list[tuple[str, bool, str]]:
    """Case review and an upload through the proxy in headless Chromium."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from tests.test_browser import go, settle

    out: list[tuple[str, bool, str]] = []
    csp: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[f"--host-resolver-rules=MAP {NAME} 127.0.0.1"])
        page = browser.new_page(ignore_https_errors=True, viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        t0 = time.time()
        page.goto(f"https://{NAME}/")
        settle(page, 300)
        loaded = False
        deadline = time.time() + 120
        while time.time() < deadline and not loaded:
            for frame in page.frames:
                if "ctehr_ct_viewer" in frame.url:
                    try:
                        loaded = bool(frame.evaluate("() => !!(window.ctehrViewer && window.ctehrViewer.loaded)"))
                    except Exception as exc:  # noqa: BLE001 - a frame replaced while read: look again
                        if "detached" not in str(exc) and "destroyed" not in str(exc):
                            raise
            page.wait_for_timeout(250)
        errors = page.locator('[data-testid="stException"]').count()
        out.append(("Case review: the CT in the viewer, no exception", loaded and errors == 0,
                    f"viewer loaded {loaded}, {errors} exception(s), {time.time() - t0:.1f} s"))
        page.screenshot(path=str(shots / "proxy_case_review.png"))
        if ct is not None:
            go(page, "Upload")
            t0 = time.time()
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').nth(0).set_input_files(str(ct))
            outcome = page.get_by_text("In memory, not saved yet", exact=False).or_(
                page.get_by_text("Study not loaded", exact=False))
            outcome.first.wait_for(timeout=180_000)
            settle(page, 180)
            text = outcome.first.inner_text().splitlines()[0][:80]
            out.append(("Upload through the proxy (XSRF, request body)", text.startswith("In memory"),
                        f"{ct.name} ({ct.stat().st_size / 1e6:.1f} MB): \"{text}\" after {time.time() - t0:.1f} s"))
            page.screenshot(path=str(shots / "proxy_upload.png"))
        other = browser.new_page(ignore_https_errors=True)  # another site framing the app (clickjacking)
        other.set_content(f'<iframe id="f" src="https://{NAME}/" width="800" height="600"></iframe>')
        other.wait_for_timeout(5000)
        framed = [f for f in other.frames if f != other.main_frame]
        shown = bool(framed) and framed[0].url.startswith(f"https://{NAME}") and framed[0].evaluate(
            "() => document.body !== null && document.body.innerText.length > 0")
        out.append(("another site cannot frame the app", not shown,
                    "blocked" if not shown else f"shown in a frame of {other.url}"))
        browser.close()
    csp = [m for m in csp if "frame-ancestors" not in m]  # the framing check above is refused by design
    out.append(("No Content-Security-Policy violation in the browser", not csp, "; ".join(csp)[:300] or "none"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="CTEHR_DATA_DIR for the app (default: a temp folder; "
                                                                 "the demo is installed there on first start)")
    parser.add_argument("--ct", type=Path, default=ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz",
                        help="a study to upload through the proxy (skipped when absent)")
    parser.add_argument("--shots", type=Path, default=Path(tempfile.gettempdir()), help="where screenshots go")
    args = parser.parse_args()
    if shutil.which("nginx") is None or shutil.which("openssl") is None:
        print("nginx and openssl are needed (Debian: apt-get install nginx-light openssl)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="ctehr-proxy-"))
    port = free_port()
    conf = write_config(nginx_block(ROOT / "docs" / "DEPLOYMENT.md"), work, port)
    test = subprocess.run(["nginx", "-t", "-c", str(conf)], capture_output=True, text=True)
    if test.returncode != 0:
        print(test.stderr)
        return 1
    env = {**os.environ, "STREAMLIT_SERVER_ALLOWED_HOSTS": NAME,
           "CTEHR_DATA_DIR": str(args.data or (work / "data"))}
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                            "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT, env=env,
                           stdout=open(work / "app.log", "w"), stderr=subprocess.STDOUT)
    proxy = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
    results: list[tuple[str, bool, str]] = []
    try:
        wait_http(port, "/_stcore/health", 300)
        time.sleep(1)
        r = https("/_stcore/metrics")
        results.append(("/_stcore/metrics through the proxy: 404", r.status == 404, str(r.status)))
        try:
            https("/", sni="evil.example", host="evil.example")
            results.append(("TLS for another name refused", False, "answered"))
        except (ssl.SSLError, ConnectionError) as err:
            results.append(("TLS for another name refused", True, type(err).__name__))
        try:
            got = str(plain("/", "evil.example").status)
        except (http.client.RemoteDisconnected, ConnectionError) as err:
            got = type(err).__name__
        results.append(("port 80, another Host: no answer", not got.isdigit(), got))
        r = plain("/x", NAME)
        results.append(("port 80 redirects to https", r.status == 301 and r.getheader("Location") == f"https://{NAME}/x",
                        f"{r.status} {r.getheader('Location')}"))
        bad, good = websocket("https://evil.example"), websocket(f"https://{NAME}")
        results.append(("WebSocket, another Origin: 403; ours: 101", (bad, good) == (403, 101), f"{bad}, {good}"))
        r = https("/")
        wanted = {"Strict-Transport-Security": "max-age=63072000", "Content-Security-Policy": "img-src 'self'",
                  "X-Frame-Options": "SAMEORIGIN", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
        missing = [h for h, v in wanted.items() if v not in (r.getheader(h) or "")]
        results.append(("security headers on the page", r.status == 200 and not missing,
                        f"{r.status}; missing: {', '.join(missing) or 'none'}"))
        results += browser_checks(args.ct if args.ct.is_file() else None, args.shots)
    finally:
        proxy.terminate()
        app.terminate()
        proxy.wait(30)
        app.wait(30)
    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name.ljust(width)}  {detail}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
