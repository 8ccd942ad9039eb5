"""The compiled CPU kernels (``csrc/qdit_cpu.cpp``): built once by ``make setup``, loaded when present.

The extension is compiled with ``torch.utils.cpp_extension`` against the installed torch into
``<qdit cache>/ext/qdit_cpu-<hash>/`` (the hash covers the source and the torch version, so a changed
source or torch gets a fresh build). Loading never compiles: when no build is there, or the CPU lacks
AMX-INT8, :func:`cpu_extension` returns ``None`` and the pure-PyTorch path is used.

    python -m qdit.kernels.cpu        # build (what make setup runs)
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from qdit.cachedir import cache_dir

NAME = "qdit_cpu"
SOURCE = Path(__file__).resolve().parent / "csrc" / "qdit_cpu.cpp"
# the whole file targets AVX-512 + AMX; nothing in it runs before amx_available() has checked the CPU
CFLAGS = [
    "-O3",
    "-std=c++17",
    "-fopenmp",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512dq",
    "-mavx512vl",
    "-mavx512vnni",
    "-mavx512bf16",
    "-mamx-tile",
    "-mamx-int8",
]


def build_dir() -> Path:
    import torch

    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    return cache_dir() / "ext" / f"{NAME}-{digest}"


def _built_library(folder: Path) -> Path | None:
    found = sorted(folder.glob(f"{NAME}*.so")) if folder.is_dir() else []
    return found[0] if found else None


def build(verbose: bool = False) -> Path:
    """Compile the extension (a minute or so) and return the path of the shared library."""
    from torch.utils.cpp_extension import load

    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    load(
        name=NAME, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
        build_directory=str(folder), verbose=verbose,
    )  # fmt: skip
    lib = _built_library(folder)
    if lib is None:
        raise RuntimeError(f"the build of {NAME} left no library in {folder}")
    return lib


@cache
def cpu_extension() -> ModuleType | None:
    """The loaded extension, or ``None`` when it is not built here or this CPU has no AMX-INT8."""
    try:
        lib = _built_library(build_dir())
        if lib is None:
            return None
        import torch  # noqa: F401  (the extension links against libtorch, loaded by this import)

        spec = importlib.util.spec_from_file_location(NAME, lib, loader=None)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None
    return module if module.amx_available() else None


def max_pool3s2(x):  # type: ignore[no-untyped-def]
    """``F.max_pool2d(x, 3, 2)``: by the extension's AVX-512 loop for a channels-last float32 CPU tensor
    (torch's channels-last max pool runs far below memory speed at the Inception stem's sizes), else by
    torch. Same values either way (a max rounds nothing; NaN propagates; of a tie between -0.0 and
    +0.0 either may come out)."""
    import torch
    import torch.nn.functional as F

    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    if is_compiling():  # a compiled graph keeps torch's op (no graph break, nothing traced here)
        return F.max_pool2d(x, 3, 2)
    ext = cpu_extension()
    if (
        ext is not None
        and hasattr(ext, "max_pool3s2")
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and min(x.shape[2:]) >= 3
        and not (torch.is_grad_enabled() and x.requires_grad)
    ):
        return ext.max_pool3s2(x)
    return F.max_pool2d(x, 3, 2)


def main() -> int:
    try:
        lib = build(verbose="-v" in sys.argv)
    except Exception as exc:  # a missing compiler must not break the install: the fallback still works
        print(f"qdit: the CPU kernels were not built ({type(exc).__name__}: {exc}); using pure PyTorch")
        return 0
    cpu_extension.cache_clear()
    state = "AMX-INT8 ready" if cpu_extension() is not None else "this CPU has no AMX-INT8: pure PyTorch"
    print(f"qdit CPU kernels: {lib} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
