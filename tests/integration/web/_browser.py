"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``, installed with
apt-get when missing (as root, or with passwordless sudo), driven by Selenium with the system driver (so
Selenium Manager never tries to download one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from seechange.config import PROJECT_ROOT

#: screenshots of the pages (gitignored), named in the README
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "web"

PACKAGES = ("chromium", "chromium-driver")


def _found() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    return (browser, driver) if browser and driver else None


def ensure_chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and its driver, installing Debian's packages when they are missing.

    Raises
    ------
    RuntimeError
        With the reason, when they are missing and cannot be installed here (no apt-get, not root and no
        passwordless sudo, or apt-get failed).
    """
    found = _found()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"{' and '.join(PACKAGES)} are missing and this machine has no apt-get")
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif (
        shutil.which("sudo")
        and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        prefix = ["sudo", "-n"]
    else:
        raise RuntimeError(f"{' and '.join(PACKAGES)} are missing; installing them needs root or sudo")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:  # an old package list: refresh it once and try again
        subprocess.run([*prefix, "apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    found = _found()
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}")
    return found


def chrome(browser: str, driver: str, *, width: int = 1400, height: int = 1000):  # type: ignore[no-untyped-def]
    """A headless Chromium WebDriver of the given window size (pixels)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)
