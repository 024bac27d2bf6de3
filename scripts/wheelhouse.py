"""A local package index of exactly the pinned set, for `docker build` without network access.

    python scripts/wheelhouse.py [--lock requirements.lock] [--out DIR]

Downloads every pin of ``requirements.lock`` (and the build backend pyproject.toml names) with
this machine's own pip configuration (PyPI, plus any local indexes pip.conf lists), builds wheels
for the few pins published as source only, and writes a PEP 503 "simple" index over them:
``DIR/files/*.whl`` and ``DIR/simple/<project>/index.html`` (links with their sha256).
scripts/build_image.sh serves DIR on 127.0.0.1 for the build, and the Dockerfile's
``PIP_INDEX_URL`` build argument points pip there; the image then holds the same versions as the
project venv, and the build itself needs no route to PyPI and no compiler.

Re-running is cheap: DIR/.inputs-sha256 records what the index was made from (the lock and the
backend), and a matching index is kept as it is. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path.home() / ".cache" / "hemo-pipeline" / "wheelhouse"
BUILD_BACKEND = "setuptools==84.2.1"
"""pyproject.toml's build backend (setuptools>=68), pinned: pip's build isolation fetches it from the index."""


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str:
    """The project name of a wheel or sdist file name (``Name-1.0-...``)."""
    stem = filename[: -len(".tar.gz")] if filename.endswith(".tar.gz") else filename.rsplit(".", 1)[0]
    return normalize(stem.split("-", 1)[0])


def inputs_digest(lock: Path) -> str:
    return hashlib.sha256(lock.read_bytes() + BUILD_BACKEND.encode()).hexdigest()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def download(lock: Path, files: Path) -> None:
    """Every pin as a file: wheels where published, sdists turned into wheels here."""
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "pins.txt"
        pins.write_text(lock.read_text() + BUILD_BACKEND + "\n")
        pip("download", "-qq", "--no-deps", "-r", str(pins), "-d", str(files))
    for sdist in [*files.glob("*.tar.gz"), *files.glob("*.zip")]:
        pip("wheel", "--quiet", "--no-deps", str(sdist), "-w", str(files))
        sdist.unlink()


def write_index(root: Path) -> int:
    """The PEP 503 pages: one per project, linking its files with their sha256."""
    simple = root / "simple"
    shutil.rmtree(simple, ignore_errors=True)
    projects: dict[str, list[Path]] = {}
    for path in sorted((root / "files").glob("*.whl")):
        projects.setdefault(project_of(path.name), []).append(path)
    for name, paths in projects.items():
        page = simple / name
        page.mkdir(parents=True)
        links = "".join(
            f'<a href="../../files/{html.escape(p.name)}#sha256={hashlib.sha256(p.read_bytes()).hexdigest()}">'
            f"{html.escape(p.name)}</a><br>\n" for p in paths)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    (simple / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n" + "".join(f'<a href="{n}/">{n}</a><br>\n' for n in sorted(projects))
        + "</body></html>\n")
    return len(projects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=REPO / "requirements.lock")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    stamp = args.out / ".inputs-sha256"
    digest = inputs_digest(args.lock)
    if stamp.is_file() and stamp.read_text().strip() == digest:
        print(f"wheelhouse: {args.out} matches {args.lock.name}")
        return 0
    started = time.perf_counter()
    files = args.out / "files"
    files.mkdir(parents=True, exist_ok=True)
    download(args.lock, files)
    count = write_index(args.out)
    stamp.write_text(digest + "\n")
    size = sum(p.stat().st_size for p in files.glob("*.whl")) / 1e9
    print(f"wheelhouse: {count} projects, {size:.2f} GB in {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
