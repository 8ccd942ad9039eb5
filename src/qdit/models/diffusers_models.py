"""diffusers transformers: adapters for ``DiTTransformer2DModel`` and ``PixArtTransformer2DModel``, and
loading a diffusers transformer or pipeline folder (the ``save_pretrained`` layout).

diffusers is optional (``pip install qdit[diffusers]``): nothing here imports it until a diffusers
model is loaded or rebuilt. The adapters recognise models by class name, so ``get_adapter`` never
imports diffusers either.

Sampling with qdit's sampler: the sampler calls ``fn(x, t, y)`` with integer class labels, label
``num_classes`` meaning "no class" for classifier-free guidance. For a diffusers DiT the label table has
``num_embeds_ada_norm + 1`` rows (its class-dropout row) and the null label is ``num_embeds_ada_norm``,
as in diffusers' ``DiTPipeline``. A PixArt is text-conditioned: it is driven with caption embeddings
given by the user (:func:`set_captions`), label ``i`` standing for caption ``i`` and the null label for
the negative (unconditional) caption.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdit.errors import QditError
from qdit.models.adapter import ModelAdapter
from qdit.models.optional import import_diffusers

_BLOCK = "transformer_blocks.*."


def _jsonable_config(config: Any) -> dict[str, Any]:
    """A diffusers config as plain JSON (the private ``_...`` keys dropped)."""
    out = {}
    for key, value in dict(config).items():
        if key.startswith("_"):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    json.dumps(out)  # raises on anything not JSON-able
    return out


class DiffusersAdapter(ModelAdapter):
    """Shared by the diffusers transformers: recognised by class name, rebuilt with ``from_config``."""

    class_name = ""

    def handles(self, model: nn.Module) -> bool:
        cls = type(model)
        return cls.__name__ == self.class_name and cls.__module__.startswith("diffusers")

    def block_names(self, model: nn.Module) -> list[str]:
        return [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))]  # type: ignore[arg-type]

    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "arch": self.arch,
            "class": type(model).__name__,
            "config": _jsonable_config(model.config),  # type: ignore[union-attr]
        }
        for key in ("source", "schedule", "vae"):
            value = getattr(model, f"qdit_{key}", None)
            if value is not None:
                desc[key] = value
        return desc

    def build(self, description: dict[str, Any]) -> nn.Module:
        diffusers = import_diffusers()
        config = description.get("config")
        if not isinstance(config, dict):
            raise QditError(f"model description has no {self.class_name} config")
        cls = getattr(diffusers, self.class_name)
        try:
            model = cls.from_config(config)
        except (TypeError, ValueError) as exc:
            raise QditError(f"bad {self.class_name} config in model description: {exc}") from None
        _restore_computed_buffers(model)
        for key in ("source", "schedule", "vae"):
            if key in description:
                object.__setattr__(model, f"qdit_{key}", description[key])
        return model

    def image_shape(self, model: nn.Module) -> tuple[int, int, int]:
        cfg = model.config  # type: ignore[union-attr]
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return (int(cfg.in_channels), h, w)

    def noise_schedule(self, model: nn.Module) -> dict[str, Any] | None:
        return getattr(model, "qdit_schedule", None)

    def tokens_per_sample(self, model: nn.Module) -> int | None:
        patch = getattr(model.config, "patch_size", None)  # type: ignore[union-attr]
        if not isinstance(patch, int) or patch < 1:
            return None
        _, h, w = self.image_shape(model)
        return max(1, (h // patch) * (w // patch))


def _restore_computed_buffers(model: nn.Module) -> None:
    """Recompute, on the CPU, the non-persistent buffers a meta-device build leaves empty (they are not in
    the state dict, so no checkpoint carries them): the sin-cos position table of ``PatchEmbed``."""
    for name, module in model.named_modules():
        for key in sorted(module._non_persistent_buffers_set):
            buf = module._buffers.get(key)
            if buf is None or not buf.is_meta:
                continue
            if type(module).__name__ == "PatchEmbed" and key == "pos_embed":
                from diffusers.models.embeddings import get_2d_sincos_pos_embed

                grid = module.pos_embed_max_size or int((module.height * module.width) ** 0.5)
                with torch.device("cpu"):
                    table = get_2d_sincos_pos_embed(
                        module.proj.out_channels, grid, base_size=module.base_size,
                        interpolation_scale=module.interpolation_scale, output_type="pt",
                    )  # fmt: skip
                module._buffers[key] = table.float().unsqueeze(0)
            else:
                where = f"{name}.{key}" if name else key
                raise QditError(f"qdit cannot recompute the buffer {where!r} of a {type(model).__name__}")


class DiffusersDiTAdapter(DiffusersAdapter):
    """diffusers ``DiTTransformer2DModel``: separate ``to_q/to_k/to_v``, per-block adaLN-Zero with its
    own timestep/label embedder (``norm1.emb``) and modulation linear (``norm1.linear``)."""

    arch = "diffusers-dit"
    class_name = "DiTTransformer2DModel"
    default_patterns = tuple(
        _BLOCK + s
        for s in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
    )
    optional_groups = {
        "adaln": (_BLOCK + "norm1.linear",),
        "embedders": (_BLOCK + "norm1.emb.*",),
        "final": ("proj_out_1", "proj_out_2"),
    }

    def _label_table(self, model: nn.Module) -> tuple[int, int]:
        """``(rows of the label table, num_embeds_ada_norm)``."""
        emb = model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table  # type: ignore[index,union-attr]
        return int(emb.num_embeddings), int(model.config.num_embeds_ada_norm)  # type: ignore[union-attr]

    def num_classes(self, model: nn.Module) -> int:
        rows, n = self._label_table(model)
        return n if rows == n + 1 else rows

    def has_null_class(self, model: nn.Module) -> bool:
        rows, n = self._label_table(model)
        return rows == n + 1

    def model_fn(
        self, model: nn.Module
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return model(x, timestep=t, class_labels=y, return_dict=False)[0]

        return fn


class PixArtAdapter(DiffusersAdapter):
    """diffusers ``PixArtTransformer2DModel``: self- and cross-attention per block (the cross-attention
    keys and values read the projected caption tokens), one shared adaLN-single, a caption projection."""

    arch = "diffusers-pixart"
    class_name = "PixArtTransformer2DModel"
    default_patterns = tuple(
        _BLOCK + s
        for s in (
            "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
            "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
            "ff.net.0.proj", "ff.net.2",
        )
    )  # fmt: skip
    optional_groups = {
        "adaln": ("adaln_single.linear",),
        "embedders": ("adaln_single.emb.*",),
        "caption": ("caption_projection.*",),
        "final": ("proj_out",),
    }

    def num_classes(self, model: nn.Module) -> int | None:
        captions = getattr(model, "qdit_captions", None)
        return None if captions is None else int(captions.shape[0])

    def has_null_class(self, model: nn.Module) -> bool:
        return getattr(model, "qdit_captions", None) is not None

    def sampling_geometry(self, model: nn.Module) -> tuple[tuple[int, int, int], int]:
        if getattr(model, "qdit_captions", None) is None:
            raise QditError(
                "a PixArt transformer is driven with caption embeddings: call "
                "qdit.models.diffusers_models.set_captions(model, embeddings) first"
            )
        return super().sampling_geometry(model)

    def model_fn(
        self, model: nn.Module
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        captions = getattr(model, "qdit_captions", None)
        if captions is None:
            self.sampling_geometry(model)  # raises the explanation
        null = model.qdit_null_caption  # type: ignore[union-attr]
        table = torch.cat([captions, null[None]])
        size = self.image_shape(model)[1:]

        def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            enc = table.to(x.device)[y.to(table.device)].to(x.dtype)
            if model.use_additional_conditions:  # type: ignore[union-attr]
                # PixArt-alpha 1024: the image size in pixels (8x the latent) and its aspect ratio
                res = torch.tensor([[size[0] * 8, size[1] * 8]], dtype=x.dtype, device=x.device).repeat(
                    len(x), 1
                )
                ar = torch.full((len(x), 1), size[0] / size[1], dtype=x.dtype, device=x.device)
                added = {"resolution": res, "aspect_ratio": ar}
            else:
                added = {"resolution": None, "aspect_ratio": None}
            return model(
                x, encoder_hidden_states=enc, timestep=t, added_cond_kwargs=added, return_dict=False
            )[0]

        return fn


def set_captions(
    model: nn.Module, captions: torch.Tensor, null_caption: torch.Tensor | None = None
) -> nn.Module:
    """Drive a PixArt ``model`` with ``captions`` ``[N, L, caption_channels]`` (text-encoder outputs):
    label ``i`` of qdit's sampler and calibration is caption ``i``; the null label (classifier-free
    guidance) is ``null_caption`` ``[L, caption_channels]`` (the negative prompt's embedding; zeros if
    not given). Kept as plain attributes, not in the state dict (a saved model does not carry them)."""
    if captions.ndim != 3:
        raise QditError(f"captions must be [N, tokens, channels], got shape {tuple(captions.shape)}")
    if null_caption is None:
        null_caption = torch.zeros_like(captions[0])
    if tuple(null_caption.shape) != tuple(captions.shape[1:]):
        raise QditError("null_caption must have the shape of one caption")
    object.__setattr__(model, "qdit_captions", captions.detach())
    object.__setattr__(model, "qdit_null_caption", null_caption.detach())
    return model


# --- folders --------------------------------------------------------------------------------------
SUPPORTED = ("DiTTransformer2DModel", "PixArtTransformer2DModel")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise QditError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise QditError(f"{path} is not a JSON object")
    return data


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def check_schedule(schedule: dict[str, Any], where: str) -> None:
    """Refuse, before any work, a scheduler config qdit's sampler cannot follow."""
    prediction = schedule.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise QditError(
            f"{where}: prediction_type {prediction!r} is not supported (qdit samples epsilon models)"
        )
    kind = schedule.get("beta_schedule", "linear")
    if schedule.get("trained_betas") is None and kind not in BETA_SCHEDULES:
        raise QditError(f"{where}: beta_schedule {kind!r} is not supported ({', '.join(BETA_SCHEDULES)})")


def is_diffusers_dir(path: str | Path) -> bool:
    """A diffusers pipeline folder (``model_index.json``) or model folder (``config.json`` with a class)."""
    root = Path(path)
    if (root / "model_index.json").is_file():
        return True
    cfg = root / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "_class_name" in json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def load_diffusers(path: str | Path) -> nn.Module:
    """The transformer of a diffusers pipeline folder, or a transformer folder, in eval mode.

    From a pipeline folder the transformer comes from ``transformer/``, its training noise schedule
    from ``scheduler/scheduler_config.json`` and the VAE folder (``vae/``) is remembered when present;
    they travel with the model (``qdit_schedule``, ``qdit_vae``) into a quantized checkpoint.
    """
    root = Path(path)
    schedule = vae = None
    folder = root
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        if "transformer" not in index or not (root / "transformer").is_dir():
            raise QditError(f"{root} is a diffusers pipeline without a transformer/ folder")
        folder = root / "transformer"
        sched = root / "scheduler" / "scheduler_config.json"
        if sched.is_file():
            schedule = {k: v for k, v in _read_json(sched).items() if not k.startswith("_")}
        if (root / "vae" / "config.json").is_file():
            vae = str((root / "vae").resolve())
    config = _read_json(folder / "config.json")
    name = config.get("_class_name")
    if name not in SUPPORTED:
        raise QditError(
            f"{folder}: qdit has no adapter for diffusers {name!r} (supported: {', '.join(SUPPORTED)}); "
            "quantize it from Python with qdit.models.adapter.PatternAdapter"
        )
    diffusers = import_diffusers()
    cls = getattr(diffusers, name)
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()
        raise QditError(
            f"cannot load the diffusers model in {folder}: {first[0] if first else exc}"
        ) from None
    if schedule is not None:
        check_schedule(schedule, f"{root}/scheduler")
        object.__setattr__(model, "qdit_schedule", schedule)
    if vae is not None:
        object.__setattr__(model, "qdit_vae", vae)
    object.__setattr__(model, "qdit_source", str(root))
    return model.float().eval()
