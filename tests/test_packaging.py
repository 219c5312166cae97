"""Installing megactllm leaves a site's own torch alone (NVIDIA's container builds TE and apex on it).

A fresh virtual environment gets a REAL torch of another version than this one (the first such
wheel on the machine's local package sources, which pip's configuration names; a CUDA build is
fine: it is installed without its CUDA libraries and never imported) plus, by symlink, every other
package of this environment. pip then resolves `pip install -e <repo>` there (--dry-run --report,
no build isolation, so nothing is downloaded or compiled) and must install nothing named torch.
A control resolves the old pin (torch==<this version>) in the same environment and must replace
torch, so the check is not empty. Skipped when no other torch wheel exists locally (no multi-GB
download in a test).
"""
import json
import re
import subprocess
import sys
import sysconfig
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WHEEL = re.compile(r"torch-(\d+\.\d+\.\d+)(\+\w+)?-cp(\d+)-cp\d+-manylinux[^/]*_x86_64\.whl$")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href.split("#")[0])


def _local_sources() -> list[Path]:
    """Local wheel files pip is configured to see: find-links dirs and file:// simple indexes."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    values = " ".join(line.split("=", 1)[1].strip("'\"") for line in out.splitlines()
                      if "find-links" in line or "index-url" in line)
    wheels = []
    for value in values.split():
        url = urlparse(value)
        path = Path(unquote(url.path)) if url.scheme in ("", "file") else None
        if path is None:
            continue
        if path.is_dir() and (path / "torch" / "index.html").is_file():  # a file:// simple index
            parser = _Links()
            parser.feed((path / "torch" / "index.html").read_text())
            base = (path / "torch").as_uri() + "/"
            wheels += [Path(unquote(urlparse(urljoin(base, h)).path)) for h in parser.hrefs]
        elif path.is_dir():
            wheels += list(path.glob("torch-*.whl"))
    return [w for w in wheels if w.is_file()]


def _other_torch_wheel():
    mine = torch.__version__.split("+")[0]
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    for wheel in _local_sources():
        m = WHEEL.search(wheel.name)
        if m and m.group(1) != mine and m.group(3) == py:
            return wheel, m.group(1)
    return None, None


def _pip(python, *args, check=True):
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args],
                          capture_output=True, text=True, check=check, timeout=300)


def _installs(python, report: Path, *requirement) -> dict:
    _pip(python, "install", "--dry-run", "--no-build-isolation", "--report", str(report), *requirement)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}


@pytest.mark.timeout(240)
def test_install_keeps_the_sites_torch(tmp_path):
    wheel, version = _other_torch_wheel()
    if wheel is None:
        pytest.skip(f"no local torch wheel of a version other than {torch.__version__} for this Python")
    venv = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Everything this environment has except torch and megactllm: only torch may make pip act.
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.startswith(("torch", "megactllm", "__editable__", "_megactllm")) or name == "__pycache__":
            continue
        (site / entry.name).symlink_to(entry)
    _pip(python, "install", "--no-deps", "--no-index", "-q", str(wheel))

    installs = _installs(python, tmp_path / "report.json", "-e", str(REPO))
    assert "megactllm" in installs
    assert "torch" not in installs, f"installing megactllm would replace the site's torch {version}: {installs}"
    listed = _pip(python, "list", "--format=json").stdout
    assert {"name": "torch", "version": version} in json.loads(listed), "the site's torch changed"

    pinned = _installs(python, tmp_path / "pinned.json", f"torch=={torch.__version__.split('+')[0]}")
    assert "torch" in pinned, "control: a pinned torch should replace the site's (else the check above means nothing)"
