"""Sign-in end to end: st.login against a real OpenID Connect provider, in Debian's Chromium.

The provider is panva's ``oidc-provider`` (npm, pinned in tests/oidc/package-lock.json,
installed by ``npm ci`` into the git-ignored tests/oidc/node_modules on first use) run by
tests/oidc/provider.mjs on a free loopback port with one client and one account. The app
runs with ``streamlit run app.py`` on another loopback port, the tiny demo of
tests/test_app.py as its data folder and a temporary secrets.toml (``--secrets.files``,
the repository's own files are never touched). In Chromium: signed out, only the
sign-in screen; sign in through the provider's login form; the app with the user's name
and e-mail; sign out (through the provider's end-session page); the sign-in screen again.
The audit log gets exactly one new login line, carrying the provider's ``sub`` and
nothing else about the user. Screenshots go to ``$CTEHR_SCREENSHOTS`` when it is set.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
OIDC_DIR = ROOT / "tests" / "oidc"
pytestmark = [pytest.mark.browser, pytest.mark.slow]
if not CHROMIUM.exists():
    pytest.skip(f"Debian chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node/npm not found: the test OpenID Connect provider (npm oidc-provider) needs them",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
pytest.importorskip("authlib", reason="Authlib is not installed (st.login needs it; see requirements.txt)")
pytest.importorskip("httpx", reason="httpx is not installed (st.login's Authlib client needs it; see requirements.txt)")

from tests.test_browser import _free_port, browser, settle, wait_http  # noqa: E402,F401,F811 - browser: the shared fixture
from tests.test_browser import shot as _shot  # noqa: E402

CLIENT_ID = "ctehr-test"
ACCOUNT = {"sub": "clinician-7f3a", "email": "ada.clinician@hospital.test", "name": "Ada Clinician"}
# a second account of the same provider (tests/test_users_browser.py: users kept apart)
SECOND_ACCOUNT = {"sub": "clinician-b21c", "email": "bo.clinician@hospital.test", "name": "Bo Clinician"}
NPM_TIMEOUT_S = 240


def _oidc_modules() -> Path:
    """tests/oidc/node_modules with the pinned oidc-provider (``npm ci`` once; skip when it cannot be had)."""
    lock = json.loads((OIDC_DIR / "package-lock.json").read_text())
    want = lock["packages"]["node_modules/oidc-provider"]["version"]
    installed = OIDC_DIR / "node_modules" / "oidc-provider" / "package.json"
    # one install at a time: two test processes (pytest -n 2) would otherwise run npm ci into the same folder
    with open(Path(tempfile.gettempdir()) / "ctehr-oidc-npm-ci.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if installed.exists() and json.loads(installed.read_text())["version"] == want:
            return installed.parents[1]
        try:
            done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=OIDC_DIR,
                                  capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm ci of oidc-provider {want} took over {NPM_TIMEOUT_S} s (no registry?)")
    if done.returncode != 0 or not installed.exists():
        pytest.skip(f"npm ci of oidc-provider {want} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return installed.parents[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_app import build_test_demo

    return build_test_demo(tmp_path_factory)


@pytest.fixture(scope="module")
def signed_in_app(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app URL, served with [auth] pointing at a real OpenID Connect provider on loopback."""
    _oidc_modules()
    work = tmp_path_factory.mktemp("login")
    app_port, idp_port = _free_port(), _free_port()
    while idp_port == app_port:
        idp_port = _free_port()
    app_url, issuer = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{idp_port}"
    client_secret = secrets.token_urlsafe(32)
    idp_log = work / "oidc.log"
    idp_env = {**os.environ, "OIDC_PORT": str(idp_port), "OIDC_REDIRECT_URI": f"{app_url}/oauth2callback",
               "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": client_secret,
               "OIDC_ACCOUNT_SUB": ACCOUNT["sub"], "OIDC_ACCOUNT_EMAIL": ACCOUNT["email"],
               "OIDC_ACCOUNT_NAME": ACCOUNT["name"], "OIDC_ACCOUNT2_SUB": SECOND_ACCOUNT["sub"],
               "OIDC_ACCOUNT2_EMAIL": SECOND_ACCOUNT["email"], "OIDC_ACCOUNT2_NAME": SECOND_ACCOUNT["name"]}
    secrets_toml = work / "secrets.toml"
    secrets_toml.write_text(
        "[auth]\n"
        f'redirect_uri = "{app_url}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        f'client_secret = "{client_secret}"\n'
        f'server_metadata_url = "{issuer}/.well-known/openid-configuration"\n'
        "[auth.client_kwargs]\n"
        'prompt = "login"\n'  # oidc-provider has no "select_account" prompt (Streamlit's default)
    )
    app_log = work / "streamlit.log"
    procs: list[subprocess.Popen] = []
    try:
        with open(idp_log, "wb") as out:
            procs.append(subprocess.Popen(["node", str(OIDC_DIR / "provider.mjs")], cwd=OIDC_DIR, env=idp_env,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        wait_http(f"{issuer}/.well-known/openid-configuration", procs[0], idp_log, "oidc-provider")
        env = {**os.environ, "CTEHR_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
        with open(app_log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                 "--server.port", str(app_port), "--server.address", "127.0.0.1",
                 "--secrets.files", str(secrets_toml)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        wait_http(f"{app_url}/_stcore/health", procs[1], app_log, "streamlit")
        yield app_url
    finally:
        for proc in reversed(procs):
            _stop(proc)
        text = app_log.read_text(errors="replace") if app_log.exists() else ""
        assert "Uncaught app exception" not in text, text[-3000:]


def _assert_sign_in_screen_only(pg: object) -> None:
    text = pg.locator("body").inner_text()  # type: ignore[attr-defined]
    assert pg.get_by_role("button", name="Sign in").is_visible()  # type: ignore[attr-defined]
    for leak in ("Case review", "1-year risk", "Demo ", "Cohort & models", "Fusion strategy", "Upload", "Sign out",
                 ACCOUNT["name"], ACCOUNT["email"], "local mode"):
        assert leak not in text, f"{leak!r} shown before sign-in:\n{text}"
    assert pg.locator('[data-testid="stSidebarNav"]').count() == 0  # type: ignore[attr-defined]
    assert pg.locator('[data-testid="stPlotlyChart"]').count() == 0  # type: ignore[attr-defined]


def _audit_lines(data_dir: Path) -> list[dict]:
    from core.app.audit import read_audit

    return read_audit(data_dir / "audit" / "audit.jsonl")


def test_sign_in_and_out_through_a_real_openid_provider(browser: object, signed_in_app: str,
                                                         data_dir: Path) -> None:
    before = len(_audit_lines(data_dir))
    context = browser.new_context(viewport={"width": 1500, "height": 1000})  # type: ignore[attr-defined]
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    try:
        # 1. signed out: the sign-in screen and nothing else, on a deep link (the new server's first page: a new
        # server runs it as that page alone first, which hands over to app.py) and at the root
        pg.goto(signed_in_app + "/cohort_models")
        settle(pg)
        _assert_sign_in_screen_only(pg)
        assert "Page not found" not in pg.locator("body").inner_text()  # type: ignore[attr-defined]
        _shot(pg, "login_deep_link_signed_out")
        root_context = browser.new_context(viewport={"width": 1500, "height": 1000})  # type: ignore[attr-defined]
        root = root_context.new_page()
        root.goto(signed_in_app)
        settle(root)
        _assert_sign_in_screen_only(root)
        _shot(root, "login_signed_out")
        root_context.close()

        # 2. sign in from there: Streamlit sends the browser to the provider's own login form
        pg.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
        pg.wait_for_selector('input[name="login"]')
        assert pg.url.startswith(signed_in_app.rsplit(":", 1)[0])  # still loopback
        assert "/interaction/" in pg.url, pg.url
        pg.fill('input[name="login"]', ACCOUNT["sub"])
        pg.fill('input[name="password"]', "any password: devInteractions accepts it")
        _shot(pg, "login_provider_form")
        pg.click('button[type="submit"]')
        signed_in_at = time.monotonic()
        pg.wait_for_url(signed_in_app + "/**")
        # the page asked for before signing in opens (the sign-in itself ends on the root address)
        pg.get_by_role("heading", name="Cohort & models").wait_for(timeout=120_000)  # type: ignore[attr-defined]
        assert pg.url.split("?")[0].rstrip("/").endswith("/cohort_models"), pg.url  # (?review=: the tab's token)
        pg.goto(signed_in_app)  # Case review, for what follows
        pg.wait_for_selector('[data-testid="stSidebar"]')
        settle(pg, 120)
        sidebar = pg.locator('[data-testid="stSidebar"]').inner_text()  # type: ignore[attr-defined]
        assert ACCOUNT["name"] in sidebar and ACCOUNT["email"] in sidebar, sidebar
        assert pg.get_by_role("button", name="Sign out").is_visible()  # type: ignore[attr-defined]
        assert "local mode" not in sidebar
        assert pg.get_by_text("1-year risk").count() >= 1  # type: ignore[attr-defined]  # the app itself
        _shot(pg, "login_signed_in")

        # the audit log: one login line with the provider's sub and no name or e-mail anywhere
        new = _audit_lines(data_dir)[before:]
        logins = [e for e in new if e["action"] == "login"]
        assert len(logins) == 1, new
        assert logins[0]["user"] == ACCOUNT["sub"] and logins[0]["target"] == "session"
        assert set(logins[0]) == {"time", "user", "action", "target"}
        opened = [e for e in new if e["action"] == "open"]
        assert opened and all(e["user"] == ACCOUNT["sub"] for e in opened)
        raw = (data_dir / "audit" / "audit.jsonl").read_text()
        for leak in (ACCOUNT["name"], ACCOUNT["email"], "Ada", "hospital.test"):
            assert leak not in raw

        # a second tab of the same browser, and a copy of the sign-in cookie, both taken while signed in
        other = context.new_page()
        other.set_default_timeout(60_000)
        other.goto(signed_in_app)
        other.get_by_role("button", name="Sign out").wait_for(timeout=120_000)  # type: ignore[attr-defined]
        settle(other, 120)
        assert [e["action"] for e in _audit_lines(data_dir)[before:]].count("login") == 1  # a new tab, no new sign-in
        saved_cookies = context.cookies()  # type: ignore[attr-defined]
        time.sleep(max(0.0, 6.0 - (time.monotonic() - signed_in_at)))  # past core.app.signouts.CLOCK_SKEW_S

        # 3. sign out: through the provider's end-session page, back to the sign-in screen
        pg.get_by_role("button", name="Sign out").click()  # type: ignore[attr-defined]
        confirm = pg.locator('button[value="yes"]')
        confirm.wait_for()
        _shot(pg, "login_provider_logout")
        confirm.click()
        pg.wait_for_url(signed_in_app + "/**")
        pg.get_by_role("button", name="Sign in").wait_for()
        settle(pg)
        _assert_sign_in_screen_only(pg)
        _shot(pg, "login_signed_out_again")
        assert [e["action"] for e in _audit_lines(data_dir)[before:]].count("logout") == 1

        # 4. the other tab is signed out at its next step (it kept showing the app and saving as the user before),
        # and the old cookie no longer signs in (it did for its 30 days)
        # A rerun of its own may come first, also while we look: the Upload link may go between finding it and
        # clicking it (a click that waited 60 s for it failed once under load), so look again rather than wait.
        sign_in = other.get_by_role("button", name="Sign in")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 120
        while not sign_in.is_visible() and time.monotonic() < deadline:
            try:
                sign_in.wait_for(timeout=5_000)
            except playwright_api.TimeoutError:
                upload = other.get_by_role("link", name="Upload")  # type: ignore[attr-defined]
                if upload.is_visible():
                    try:
                        upload.click(timeout=5_000)
                    except playwright_api.TimeoutError:
                        continue  # the page changed under the click: look again
        sign_in.wait_for()
        settle(other)
        _assert_sign_in_screen_only(other)
        assert "You signed out" in other.locator("body").inner_text()  # type: ignore[attr-defined]
        replay = browser.new_context(viewport={"width": 1500, "height": 1000})  # type: ignore[attr-defined]
        try:
            replay.add_cookies(saved_cookies)
            again = replay.new_page()
            again.goto(signed_in_app)
            again.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
            settle(again)
            _assert_sign_in_screen_only(again)
        finally:
            replay.close()
        assert [e["action"] for e in _audit_lines(data_dir)[before:]].count("logout") == 1  # no second sign-out
    finally:
        context.close()
