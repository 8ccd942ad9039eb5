"""Loading a model from a command-line spec: ``embedded`` (the built-in image DiT), ``embedded-video`` (the
built-in video DiT), a DiT checkpoint file, a diffusers folder, or a quantized folder.

``arch`` for a checkpoint file is an official name (``DiT-XL/2``), a JSON object of
:class:`~qdit.models.dit.DiTConfig` fields (inline, e.g. ``'{"hidden_size": 64, "depth": 2, ...}'``, or a
path to a ``.json`` file), or ``None`` to infer it from the tensor shapes (the head count then comes from
the official sizes). Shape-derived fields (input size, channels, classes, learned sigma) are always read
from the checkpoint unless the JSON sets them, so ``--arch DiT-XL/2`` loads 256 and 512 checkpoints.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdit.errors import QditError
from qdit.models.dit import DiT, DiTConfig, dit_config

_HEADS_BY_WIDTH = {1152: 16, 1024: 16, 768: 12, 384: 6}

BUILTIN_MODELS = ("embedded", "embedded-video")  # model specs that name a model shipped with qdit, not a path


def is_builtin(spec: str | Path) -> bool:
    """Whether ``spec`` names a built-in model (so it is no file: it is never checked or overwritten as one)."""
    return str(spec) in BUILTIN_MODELS


def model_input_path(spec: str | Path) -> str | None:
    """The path a model spec reads, for the commands' output-collision checks (``None`` for a built-in)."""
    return None if is_builtin(spec) else str(spec)


def load_builtin(spec: str) -> nn.Module:
    """A built-in model in eval mode on the CPU, its ``qdit_source`` set to its name (recorded when saved)."""
    from qdit.models.embedded import load_embedded, load_embedded_video

    loaders = {"embedded": load_embedded, "embedded-video": load_embedded_video}
    if spec not in loaders:
        raise QditError(f"no built-in model {spec!r} (built-in: {', '.join(BUILTIN_MODELS)})")
    model = loaders[spec]()
    model.qdit_source = spec
    return model


def infer_dit_fields(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """DiT config fields readable from an official-layout state dict (``num_heads`` only for official widths)."""
    try:
        hidden, in_ch, patch, _ = state["x_embedder.proj.weight"].shape
        num_patches = state["pos_embed"].shape[1]
        depth = len(
            {k.split(".")[1] for k in state if k.startswith("blocks.") and k.endswith(".attn.qkv.weight")}
        )
        table = state["y_embedder.embedding_table.weight"].shape[0]
        out_ch = state["final_layer.linear.weight"].shape[0] // (patch * patch)
        mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as exc:
        raise QditError(f"not an official-layout DiT checkpoint (cannot read {exc})") from None
    grid = math.isqrt(int(num_patches))
    fields_: dict[str, Any] = dict(
        input_size=grid * int(patch), patch_size=int(patch), in_channels=int(in_ch), hidden_size=int(hidden),
        depth=depth, mlp_ratio=mlp_hidden / int(hidden), num_classes=int(table) - 1,
        learn_sigma=out_ch == 2 * int(in_ch),
    )  # fmt: skip
    if int(hidden) in _HEADS_BY_WIDTH:
        fields_["num_heads"] = _HEADS_BY_WIDTH[int(hidden)]
    return fields_


def _config_fields(arch: str) -> dict[str, Any] | None:
    """The DiTConfig fields of a JSON ``arch`` (inline or a file), or ``None`` for an official name."""
    text = arch.strip()
    if not text.startswith("{"):
        if not text.endswith(".json"):
            return None
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise QditError(f"cannot read --arch file {arch}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QditError(f"--arch is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise QditError("--arch JSON must be an object of DiTConfig fields")
    known = [f.name for f in fields(DiTConfig)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise QditError(f"--arch: unknown DiTConfig field {key!r}{hint}")
    return data


def resolve_dit_config(arch: str | None, state: dict[str, torch.Tensor]) -> DiTConfig:
    inferred = infer_dit_fields(state)
    shape_fields = {k: inferred[k] for k in ("input_size", "in_channels", "num_classes", "learn_sigma")}
    try:
        if arch is None:
            if "num_heads" not in inferred:
                raise QditError(
                    f"cannot infer the head count of a DiT with width {inferred['hidden_size']}; pass --arch"
                )
            return DiTConfig(**inferred)
        explicit = _config_fields(arch)
        if explicit is None:
            return dit_config(arch, **shape_fields)
        return DiTConfig(**{**inferred, **explicit})
    except (TypeError, ValueError) as exc:
        raise QditError(f"bad architecture {arch!r}: {exc}") from None


def load_dit_checkpoint(path: str | Path, arch: str | None = None) -> DiT:
    """An official-layout DiT checkpoint (``.pt``/``.pth``/``.safetensors``), strictly loaded, in eval mode."""
    from qdit.models.state_dict import load_state_dict_file, load_strict

    state = load_state_dict_file(path)
    model = DiT(resolve_dit_config(arch, state))
    load_strict(model, state, source=str(path))
    model.qdit_source = str(path)
    return model.eval()


def load_base_model(spec: str, arch: str | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """A float model: a built-in one (``embedded``, ``embedded-video``), a DiT checkpoint file (with
    ``arch``), or a diffusers pipeline or transformer folder (``save_pretrained`` layout; needs
    ``qdit[diffusers]``). Quantized folders are loaded by :func:`qdit.load` (and
    :func:`qdit.api.load_model`, which takes every kind)."""
    from qdit.io.integrity import META_FILE

    if is_builtin(spec):
        return load_builtin(spec).to(device)
    path = Path(spec)
    if path.is_dir():
        if (path / META_FILE).is_file():
            raise QditError(f"{path} is a quantized qdit folder: load it with qdit.load or qdit.api.load_model")
        from qdit.models.diffusers_models import is_diffusers_dir, load_diffusers

        if is_diffusers_dir(path):
            return load_diffusers(path).to(device)
        raise QditError(
            f"{path} is a folder but neither a quantized qdit model folder (no qdit.json) nor a diffusers "
            "pipeline or transformer folder (no model_index.json or config.json)"
        )
    if path.is_file():
        return load_dit_checkpoint(path, arch).to(device)
    raise QditError(
        f"model not found: {spec!r} (use 'embedded', 'embedded-video', a DiT checkpoint file, a diffusers folder "
        "or a qdit model folder)"
    )
