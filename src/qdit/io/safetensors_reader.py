"""Reading a ``.safetensors`` file one tensor at a time, without memory-mapping it.

``safetensors.safe_open`` maps the whole file: every page a read touches stays resident (and counts in
the process's resident memory) until the file is closed, so loading a model through it holds the file
and the model at once. This reader parses the header itself, checks every entry against the file size,
and reads each tensor with one ``readinto`` into its own storage.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from qdit.errors import QditError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
_MAX_HEADER = 100 * 2**20


def _whole(v: object) -> bool:
    return type(v) is int and v >= 0


class SafetensorsReader:
    """``keys()`` and ``get(name)`` of a safetensors file; a malformed file raises :class:`QditError`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close() / the context manager)
        try:
            size = os.fstat(self._file.fileno()).st_size
            head = self._file.read(8)
            if len(head) != 8:
                raise ValueError("shorter than its header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(self._file.read(n))
            if not isinstance(header, dict):
                raise ValueError("the header is not an object")
            self.metadata: dict[str, Any] = header.pop("__metadata__", None) or {}
            self._base = 8 + n
            self._entries: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
            for name, e in header.items():
                code = e.get("dtype") if isinstance(e, dict) else None
                dtype = _DTYPES.get(code) if isinstance(code, str) else None
                shape, offsets = (e.get("shape"), e.get("data_offsets")) if isinstance(e, dict) else (None, None)
                if dtype is None or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
                    raise ValueError(f"bad entry for {name!r}")
                if not all(_whole(v) for v in [*shape, *offsets]):
                    raise ValueError(f"bad shape or offsets for {name!r}")
                begin, end = offsets
                numel = 1
                for d in shape:
                    numel *= d
                itemsize = torch.empty(0, dtype=dtype).element_size()
                if not 0 <= begin <= end or self._base + end > size or end - begin != numel * itemsize:
                    raise ValueError(f"the data of {name!r} does not fit the file")
                self._entries[name] = (dtype, list(shape), begin, end)
        except (ValueError, UnicodeDecodeError, json.JSONDecodeError, struct.error) as exc:
            self._file.close()
            raise QditError(f"{self.path} is corrupt or unreadable: {exc}") from None

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self._entries[name]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        self._file.seek(self._base + begin)
        if self._file.readinto(memoryview(buf.numpy())) != end - begin:
            raise QditError(f"{self.path}: tensor {name!r} is truncated")
        return buf.view(dtype).reshape(shape)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    with SafetensorsReader(path) as reader:
        return {k: reader.get(k) for k in reader.keys()}
