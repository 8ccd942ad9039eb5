"""Quantized model folders: packed low-bit weights + scales in ``model.safetensors`` and ``qdit.json``.

Layout of a folder written by :func:`save`:

* ``qdit.json``: ``format`` ("qdit"), ``format_version``, ``qdit_version``, ``model`` (the adapter's
  description of the base model, e.g. ``{"arch": "dit", "config": {...}, "source": "embedded"}``),
  ``recipe`` (the recipe it was quantized with, if known) and ``layers``: for each quantized linear its
  ``spec``, ``in_features``, ``out_features``, ``bias``, ``weight_dtype`` and ``scale_dtype``; and
  ``integrity``: sha256 digests of the files, the recipe and the description, checked by :func:`load`
  (:mod:`qdit.io.integrity`).
* ``model.safetensors``: for each quantized layer ``<name>.weight_packed`` (its codes, bit-packed by
  :func:`qdit.quant.packing.pack_bits`, shaped ``[out, in * bits / 8]`` when that is whole),
  ``<name>.weight_scale`` ``[out, G]``, ``<name>.weight_zero_packed`` (asymmetric only, packed),
  its bias, SmoothQuant factors and static activation ranges; every other tensor of the model as is.

:func:`load` rebuilds the model on the meta device, so no float weight of a quantized layer is ever
materialized, reads the stored tensors one at a time and puts each quantized layer on its kernel path.
The clip/frame layout of each layer's input (for ``sample`` and ``frame`` activation ranges on video
models) is not stored: it comes from the rebuilt model's adapter, as it did in ``qdit.quantize``. Writes are atomic: the folder is written beside the
target and renamed into place; on error an existing target is left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qdit.errors import QditError
from qdit.io.atomic import output_mode
from qdit.io.integrity import META_FILE, digests, meta_text
from qdit.io.integrity import verify as verify_integrity
from qdit.quant.finite import check_finite, check_finite_tensors

if TYPE_CHECKING:
    from qdit.io.safetensors_reader import SafetensorsReader

FORMAT = "qdit"
FORMAT_VERSION = 2  # 2: sha256 digests in qdit.json (qdit.io.integrity); 1 (no digests) is still read
WEIGHTS_FILE = "model.safetensors"


def qdit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qdit")
    except PackageNotFoundError:
        return "unknown"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype(name: object) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise QditError(f"unknown dtype {name!r} in {META_FILE}")
    return dt


def is_qdit_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file()


def check_save_target(target: str | os.PathLike) -> None:
    """A folder :func:`save` may write: new, empty, or a qdit model folder (which it replaces)."""
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise QditError(f"{target} exists and is not a folder")
        if any(target.iterdir()) and not is_qdit_dir(target):
            raise QditError(f"refusing to overwrite {target}: it is not empty and not a qdit model folder")


def write_dir_atomic(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Fill a fresh folder with ``write(tmp)`` beside ``target``, then rename it over ``target``.

    An existing ``target`` must be a qdit folder or empty (we never replace a folder we did not write);
    it is replaced only after ``write`` succeeded.
    """
    target = Path(target)
    check_save_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():  # some writers (safetensors) create files 0600
            os.chmod(f, output_mode(target / f.name))
        os.chmod(tmp, output_mode(target, folder=True))
        if target.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _layer_tensors(name: str, layer: Any) -> dict[str, torch.Tensor]:
    from qdit.quant.packing import pack_bits

    qw = layer.qweight
    out, width = qw.shape
    bits = qw.bits
    packed = pack_bits(qw.codes, bits)
    if (width * bits) % 8 == 0:
        packed = packed.reshape(out, width * bits // 8)
    tensors = {f"{name}.weight_packed": packed, f"{name}.weight_scale": qw.scale}
    if qw.zero is not None:
        tensors[f"{name}.weight_zero_packed"] = pack_bits(qw.zero, bits)
    return tensors


def save(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Write a quantized ``model`` to the folder ``path`` (atomically); returns a size report.

    The report: ``bytes`` (``model.safetensors``), ``quantized_layers``, ``quantized_weight_bytes``
    (packed codes + scales + zeros of the quantized layers) and ``quantized_weight_bf16_bytes`` (the
    same weights in bf16).
    """
    from safetensors.torch import save_file

    from qdit.models.adapter import get_adapter
    from qdit.nn.swap import quant_layers

    layers = quant_layers(model)
    if not layers:
        raise QditError("the model has no quantized layers; quantize it first (qdit.quantize)")
    description = get_adapter(model).describe(model)
    if description is None:
        raise QditError(
            f"qdit cannot save a {type(model).__name__}: its model adapter cannot describe it for rebuilding"
        )
    tensors: dict[str, torch.Tensor] = {}
    layer_meta: dict[str, dict[str, Any]] = {}
    skip: set[str] = set()
    q_bytes = bf16_bytes = 0
    for name, layer in layers.items():
        lt = _layer_tensors(name, layer)
        tensors.update(lt)
        q_bytes += sum(t.numel() * t.element_size() for t in lt.values())
        bf16_bytes += layer.in_features * layer.out_features * 2
        skip |= {f"{name}.weight_codes", f"{name}.weight_scale", f"{name}.weight_zero"}
        layer_meta[name] = {
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "bias": layer.bias is not None,
            "spec": layer.spec.to_dict(),
            "weight_dtype": _dtype_name(layer.weight_dtype),
            "scale_dtype": _dtype_name(layer.weight_scale.dtype),
        }
    for key, value in model.state_dict().items():
        if key not in skip:
            tensors[key] = value
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    recipe = getattr(model, "qdit_recipe", None)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qdit_version": qdit_version(),
        "model": description,
        "recipe": recipe.to_dict() if recipe is not None else None,
        "layers": layer_meta,
    }

    check_finite_tensors(tensors, f"cannot save {path}")

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        meta["integrity"] = digests(tmp, [WEIGHTS_FILE], meta)
        (tmp / META_FILE).write_text(meta_text(meta))

    write_dir_atomic(path, write)
    return {
        "path": str(path),
        "bytes": (Path(path) / WEIGHTS_FILE).stat().st_size,
        "quantized_layers": len(layers),
        "quantized_weight_bytes": q_bytes,
        "quantized_weight_bf16_bytes": bf16_bytes,
    }


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``qdit.json`` of a quantized model folder."""
    root = Path(path)
    if not root.exists():
        raise QditError(f"quantized model folder not found: {root}")
    if not root.is_dir():
        raise QditError(f"{root} is not a quantized model folder (not a folder)")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise QditError(f"{root} is not a quantized model folder: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QditError(f"{meta_path} is corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise QditError(f"{meta_path} is not a qdit checkpoint description")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise QditError(
            f"{meta_path}: unsupported format_version {version!r} (this qdit reads 1..{FORMAT_VERSION})"
        )
    if not isinstance(meta.get("model"), dict) or not isinstance(meta.get("layers"), dict):
        raise QditError(f"{meta_path} is corrupt: 'model' and 'layers' must be objects")
    return meta


def load(
    path: str | os.PathLike, device: torch.device | str = "cpu", kernel: str = "auto", verify: bool = True
) -> nn.Module:
    """Rebuild a model saved by :func:`save`, in eval mode on ``device``.

    The model is built on the meta device and each quantized layer is filled from its packed tensors,
    read one at a time, and put on its kernel path right away (``kernel``: ``auto``, ``int`` or ``fake``,
    see :func:`qdit.nn.choose_kernel`), so neither a float copy of a quantized weight nor a second
    copy of its codes is ever held. Through ``fake`` the outputs match the saved model's exactly.

    ``verify`` checks every file against the sha256 digests in ``qdit.json`` first (see
    :mod:`qdit.io.integrity`); ``False`` skips that pass over the files. Non-finite tensors are refused
    either way.
    """
    from qdit.io.safetensors_reader import SafetensorsReader
    from qdit.nn.swap import KERNELS

    if kernel not in KERNELS:
        raise QditError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    root = Path(path)
    meta = read_meta(root)
    if verify:
        verify_integrity(root, meta)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise QditError(f"{root} is not a complete quantized model folder: {WEIGHTS_FILE} is missing")
    from qdit.io.memory import compact_allocations

    with compact_allocations(), SafetensorsReader(weights) as reader:
        return _load(root, meta, reader, device, kernel)


def _load(root: Path, meta: dict[str, Any], reader: SafetensorsReader, device: torch.device | str, kernel: str) -> nn.Module:
    from qdit.kernels.formats import IntWeight, code_columns
    from qdit.models.adapter import adapter_for_description
    from qdit.nn.quant_linear import QuantLinear
    from qdit.nn.swap import choose_kernel, freeze, fuse, set_submodule
    from qdit.quant.packing import unpack_bits
    from qdit.quant.primitives import num_groups
    from qdit.recipe import QuantSpec, Recipe

    weights = reader.path
    left = set(reader.keys())

    def take(key: str) -> torch.Tensor:
        if key not in left:
            raise QditError(f"{weights}: missing tensor {key!r}")
        left.discard(key)
        return check_finite(reader.get(key), f"{weights}: tensor {key!r}")

    adapter = adapter_for_description(meta["model"])
    with torch.device("meta"):
        model = adapter.build(meta["model"])
    expected = set(model.state_dict())
    on_cpu = torch.device(device).type == "cpu"
    layouts = adapter.activation_layout(model)  # from the architecture, as qdit.quantize got them
    for name, info in meta["layers"].items():
        try:
            spec = QuantSpec.from_dict(info["spec"])
            width, out, has_bias = int(info["in_features"]), int(info["out_features"]), bool(info["bias"])
            weight_dtype, scale_dtype = _dtype(info["weight_dtype"]), _dtype(info["scale_dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise QditError(f"{root / META_FILE}: bad entry for layer {name!r}: {exc}") from None
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise QditError(f"{root / META_FILE}: the model has no layer {name!r}") from None
        if not isinstance(old, nn.Linear) or (old.in_features, old.out_features) != (width, out):
            raise QditError(f"{root / META_FILE}: layer {name!r} does not match the model")
        prefix = name + "."
        expected = {k for k in expected if not k.startswith(prefix)}
        layer = QuantLinear(
            width, out, spec, has_bias, weight_dtype=weight_dtype, scale_dtype=scale_dtype, device="meta", name=name
        )  # fmt: skip
        layer.set_layout(layouts.get(name))
        set_submodule(model, name, layer)
        bits = spec.w_bits
        try:
            packed = take(f"{name}.weight_packed")
            if packed.dtype != torch.uint8:
                raise QditError(f"{weights}: {name}.weight_packed is {_dtype_name(packed.dtype)}, expected uint8")
            columns = code_columns(width, bits)
            if columns * 8 == width * bits and packed.numel() == out * columns:
                data = packed.reshape(out, columns)  # 4-bit (even widths) and 8-bit: the file's packing is ours
            else:
                codes = unpack_bits(packed, bits, out * width).reshape(out, width)
                data = IntWeight.from_codes(codes, torch.empty(0), None, bits).data
                del codes
            scale = take(f"{name}.weight_scale")
            if scale.dtype != scale_dtype:
                raise QditError(
                    f"{weights}: {name}.weight_scale is {_dtype_name(scale.dtype)}, {META_FILE} says "
                    f"{_dtype_name(scale_dtype)}"
                )
            zero = None
            if not spec.w_symmetric:
                groups = num_groups(width, spec.w_group)
                zero = unpack_bits(take(f"{name}.weight_zero_packed"), bits, out * groups).reshape(out, groups)
        except ValueError as exc:
            if isinstance(exc, QditError):  # a non-finite scale: already a one-line message
                raise
            raise QditError(f"{weights}: bad packed weight of layer {name!r}: {exc}") from None
        state = {k[len(prefix) :]: take(k) for k in sorted(left) if k.startswith(prefix)}
        state.update(weight_codes=data, weight_scale=scale)
        if zero is not None:
            state["weight_zero"] = zero
        try:
            layer.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise QditError(f"{weights}: layer {name!r}: {first[-1].strip() if first else exc}") from None
        if on_cpu:  # into the kernel's layout now: the plain codes of this layer are dropped here
            layer.set_kernel(choose_kernel(layer, kernel), consume=True)
    for key in sorted(expected):
        if key not in left:
            raise QditError(f"{weights}: missing tensor {key!r}")
    for key in sorted(left):
        if key not in expected:
            raise QditError(f"{weights}: unexpected tensor {key!r}")
    rest = {k: take(k) for k in sorted(left)}
    try:
        model.load_state_dict(rest, strict=False, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise QditError(f"{weights}: {first[-1].strip() if first else exc}") from None
    for key, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise QditError(f"{root}: tensor {key!r} was not restored")
    if meta.get("recipe") is not None:
        try:
            model.qdit_recipe = Recipe.from_dict(meta["recipe"])
        except QditError as exc:
            raise QditError(f"{root / META_FILE}: bad recipe: {exc}") from None
    model = model.to(device).eval()
    if not on_cpu:
        freeze(model, kernel)
    fuse(model, adapter.activation_pairs(model))
    return model
