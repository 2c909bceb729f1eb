"""docs/DEPLOYMENT.md's nginx block: headers that let the app frame its own CT viewer, and a configuration nginx
accepts (``nginx -t``, where nginx is installed). The block runs for real, browser included, with
``sudo python scripts/check_proxy.py`` (ports 443 and 80: not in CI)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("check_proxy", ROOT / "scripts" / "check_proxy.py")
assert _spec is not None and _spec.loader is not None
check_proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_proxy)


def test_the_proxy_lets_the_app_frame_its_viewer_and_no_one_else() -> None:
    """The CT viewer is a component page of the app's own server in an iframe: ``X-Frame-Options DENY`` blocked it
    behind the proxy (found by scripts/check_proxy.py); other sites stay out by SAMEORIGIN and frame-ancestors."""
    block = check_proxy.nginx_block(ROOT / "docs" / "DEPLOYMENT.md")
    headers = {line.split()[1]: line for line in block.splitlines() if line.strip().startswith("add_header")}
    assert "SAMEORIGIN" in headers["X-Frame-Options"] and "DENY" not in headers["X-Frame-Options"]
    assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
    assert "return 404" in block.split("location ^~ /_stcore/metrics")[1].split("\n")[0]


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None,
                    reason="nginx or openssl not installed (Debian: apt-get install nginx-light)")
def test_nginx_accepts_the_documented_configuration(tmp_path: Path) -> None:
    conf = check_proxy.write_config(check_proxy.nginx_block(ROOT / "docs" / "DEPLOYMENT.md"), tmp_path, 8501)
    done = subprocess.run(["nginx", "-t", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
