"""The wheels an offline GPU node needs to install megactllm beside its own torch.

    python -m bench.gpu_check.wheels DIR --python 3.12 [--max-mib 64]

pip resolves megactllm's requirements (and its build requirements) for the node's Python and
platform without installing anything (`pip install --dry-run --report`). The wheels kept are those
reachable from megactllm's requirements without passing through torch: torch, its CUDA wheels and
what only torch needs are the site's. Requirements published only as source (jieba, langid, ...)
are built here into pure-Python wheels first. Then `pip download --no-deps` fetches exactly that set.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the node already has: its torch. Nothing past it is followed.
SITE_PROVIDED = {"torch"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64")
MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")


class WheelSetError(RuntimeError):
    pass


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_requires(setup_py: Path = REPO / "setup.py") -> list[str]:
    """setup.py's install_requires list, read as data (setup.py is not run)."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return list(ast.literal_eval(node.value))
    raise WheelSetError(f"{setup_py}: no install_requires list")


def build_requires(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    import tomllib

    return list(tomllib.loads(pyproject.read_text())["build-system"]["requires"])


def target_flags(python: str) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def resolve(requirements: list[str], python: str, wheel_dir: Path, work: Path) -> dict:
    """pip's resolution for the target; source-only requirements are built into wheel_dir and retried."""
    built: set[str] = set()
    while True:
        report = work / "report.json"
        done = pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                   "--target", str(work / "target"), "--find-links", str(wheel_dir), *target_flags(python), *requirements)
        if done.returncode == 0:
            return json.loads(report.read_text())
        missing = MISSING.search(done.stderr)
        if not missing or canonical(missing.group(1)) in built:
            raise WheelSetError(f"pip could not resolve megactllm's requirements for Python {python}:\n{done.stderr[-3000:]}")
        name = missing.group(1)
        build_pure_wheel(name, requirements, wheel_dir)
        built.add(canonical(name))


def build_pure_wheel(name: str, requirements: list[str], wheel_dir: Path) -> None:
    """A requirement with no wheel for the target: build it here; only a pure-Python one fits any node."""
    spec = next((r for r in requirements if canonical(re.split(r"[<>=!~;\[ ]", r, 1)[0]) == canonical(name)), name)
    before = set(wheel_dir.glob("*.whl"))
    done = pip("wheel", "--no-deps", "--quiet", "-w", str(wheel_dir), spec)
    new = set(wheel_dir.glob("*.whl")) - before
    if done.returncode != 0 or not new:
        raise WheelSetError(f"{name} has no wheel for the node and building one failed:\n{done.stderr[-2000:]}")
    for wheel in new:
        if not wheel.name.endswith("-none-any.whl"):
            wheel.unlink()
            raise WheelSetError(f"{name} has no wheel for the node and its source builds a compiled wheel ({wheel.name}): "
                                "it needs a wheel built on the node's platform")


def marker_environment(python: str, extra: str = "") -> dict:
    return {"python_version": python, "python_full_version": python + ".0", "implementation_name": "cpython",
            "implementation_version": python + ".0", "platform_python_implementation": "CPython", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "platform_release": "",
            "platform_version": "", "extra": extra}


def needed(report: dict, roots: list[str], python: str) -> dict[str, dict]:
    """Report items reachable from `roots` without passing through SITE_PROVIDED, by canonical name."""
    from packaging.requirements import Requirement

    items = {canonical(i["metadata"]["name"]): i for i in report["install"]}
    keep: dict[str, dict] = {}
    todo = [(Requirement(r), "") for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, extra = todo.pop()
        name = canonical(req.name)
        if req.marker is not None and not req.marker.evaluate(marker_environment(python, extra)):
            continue
        if name in SITE_PROVIDED or (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        if name not in items:
            raise WheelSetError(f"{req.name} is required but pip's resolution holds no {req.name}")
        keep[name] = items[name]
        for dep in items[name]["metadata"].get("requires_dist", []):
            dep_req = Requirement(dep)
            if dep_req.marker is None or "extra" not in str(dep_req.marker):
                todo.append((dep_req, ""))
            else:  # an extra's requirement: followed only for the extras asked for
                for asked in req.extras:
                    todo.append((dep_req, asked))
    return keep


def collect(out: Path, python: str, max_mib: float) -> tuple[list[Path], int]:
    out.mkdir(parents=True, exist_ok=True)
    roots = install_requires() + build_requires()
    with tempfile.TemporaryDirectory(prefix="offline-wheels-") as tmp:
        work = Path(tmp)
        report = resolve(roots, python, out, work)
        keep = needed(report, roots, python)
        files = {item["download_info"]["url"].rsplit("/", 1)[-1]: item for item in keep.values()}
        remote = [f"{i['metadata']['name']}=={i['metadata']['version']}" for name, i in files.items()
                  if not (out / name).exists()]
        if remote:
            done = pip("download", "--no-deps", "--quiet", "-d", str(out), *target_flags(python), *remote)
            if done.returncode != 0:
                raise WheelSetError(f"pip download failed:\n{done.stderr[-3000:]}")
    # Built or downloaded earlier for another set: not this one's.
    for stale in out.glob("*.whl"):
        if stale.name not in files:
            stale.unlink()
    wheels = sorted(out / name for name in files)
    missing = [w.name for w in wheels if not w.exists()]
    if missing:
        raise WheelSetError(f"not in {out} after download: {', '.join(missing)}")
    total = sum(w.stat().st_size for w in wheels)
    return wheels, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="directory for the wheels")
    p.add_argument("--python", default="3.12", help="the node's Python, major.minor (default 3.12)")
    p.add_argument("--max-mib", type=float, default=64.0, help="fail when the set is larger (default 64)")
    a = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", a.python):
        print(f"error: --python {a.python!r}: give major.minor, e.g. 3.12", file=sys.stderr)
        return 2
    try:
        wheels, total = collect(a.out, a.python, a.max_mib)
    except WheelSetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    print(f"{len(wheels)} wheels for Python {a.python} (x86_64 Linux), {total / 2**20:.1f} MiB in all, in {a.out}")
    if total > a.max_mib * 2**20:
        print(f"error: {total / 2**20:.1f} MiB is over the {a.max_mib:g} MiB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
