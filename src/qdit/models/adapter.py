"""Model adapters: the architecture knowledge the quantizer needs, kept out of the quantizer.

An adapter says which linear layers of a model are quantized by default and which named optional groups
exist (``"adaln"`` for our DiT), how to describe the model so that a saved quantized checkpoint can
rebuild it without its float weights, and how to drive it for calibration (a few sampling trajectories).
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from qdit.errors import QditError


def _match(names: list[str], patterns: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def _is_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear or isinstance(module, nn.Linear)


class ModelAdapter:
    """The generic adapter: every ``nn.Linear`` is quantized by default; no rebuild, no calibration driver."""

    arch = "generic"
    default_patterns: tuple[str, ...] = ("*",)
    optional_groups: dict[str, tuple[str, ...]] = {}

    def handles(self, model: nn.Module) -> bool:
        return True

    def linear_layers(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Every ``nn.Linear`` of the model by qualified name, in module order."""
        return {n: m for n, m in model.named_modules() if n and _is_linear(m)}

    def layer_widths(self, model: nn.Module) -> dict[str, int]:
        return {n: m.in_features for n, m in self.linear_layers(model).items()}

    def layer_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """``{"default": [...], <optional group>: [...], "all": [...]}`` over the model's linears."""
        names = list(self.linear_layers(model))
        groups = {"default": _match(names, self.default_patterns)}
        for group, patterns in self.optional_groups.items():
            groups[group] = _match(names, patterns)
        groups["all"] = names
        return groups

    def block_names(self, model: nn.Module) -> list[str] | None:
        """The model's transformer blocks in call order, each called as ``block(x, *rest) -> x`` with
        ``rest`` the same for every block (enables block-by-block calibration); ``None`` if unknown."""
        return None

    def describe(self, model: nn.Module) -> dict[str, Any] | None:
        """A JSON-able description from which :meth:`build` recreates the model; ``None`` if unsupported."""
        return None

    def build(self, description: dict[str, Any]) -> nn.Module:
        """The model of ``description`` (with uninitialized weights; called on the meta device by loaders)."""
        raise QditError(f"qdit cannot rebuild a model of kind {description.get('arch')!r}")

    def calibration_runner(
        self,
        model: nn.Module,
        *,
        num_samples: int,
        steps: int,
        cfg_scale: float,
        seed: int,
        batch_size: int,
        progress: bool = False,
        cfg_channels: int | None = None,
    ) -> Callable[[], object]:
        """A callable that drives ``model`` over a few sampling trajectories (for calibration hooks)."""
        raise QditError(
            f"qdit does not know how to sample from a {type(model).__name__}; capture calibration data "
            "with qdit.calib.capture(model, layers, run) and your own run function"
        )


class DiTAdapter(ModelAdapter):
    """Our :class:`qdit.models.dit.DiT` (official DiT layout)."""

    arch = "dit"
    default_patterns = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2")
    optional_groups = {"adaln": ("blocks.*.adaLN_modulation.1",)}

    def handles(self, model: nn.Module) -> bool:
        from qdit.models.dit import DiT

        return isinstance(model, DiT)

    def block_names(self, model: nn.Module) -> list[str]:
        return [f"blocks.{i}" for i in range(len(model.blocks))]  # type: ignore[arg-type]

    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc: dict[str, Any] = {"arch": self.arch, "config": model.config.to_dict()}  # type: ignore[union-attr]
        source = getattr(model, "qdit_source", None)
        if source is not None:
            desc["source"] = str(source)
        return desc

    def build(self, description: dict[str, Any]) -> nn.Module:
        from qdit.models.dit import DiT, DiTConfig

        config = description.get("config")
        if not isinstance(config, dict):
            raise QditError("model description has no DiT config")
        try:
            cfg = DiTConfig(**config)
        except TypeError as exc:
            raise QditError(f"bad DiT config in model description: {exc}") from None
        model = DiT(cfg)
        if "source" in description:
            model.qdit_source = description["source"]
        return model

    def calibration_runner(
        self,
        model: nn.Module,
        *,
        num_samples: int,
        steps: int,
        cfg_scale: float,
        seed: int,
        batch_size: int,
        progress: bool = False,
        cfg_channels: int | None = None,
    ) -> Callable[[], object]:
        from qdit.diffusion.sampler import SamplerConfig, default_labels, generate

        cfg = model.config  # type: ignore[union-attr]
        shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        labels = default_labels(num_samples, cfg.num_classes)
        sampler = SamplerConfig(steps=steps, method="ddim", cfg_scale=cfg_scale, cfg_channels=cfg_channels)
        device = next(model.parameters()).device

        def run() -> torch.Tensor:
            return generate(
                model, shape, cfg.num_classes, labels, seed, sampler, batch_size=batch_size, device=device,
                progress=progress, progress_desc="calibration",
            )  # fmt: skip

        return run


_ADAPTERS: list[ModelAdapter] = [DiTAdapter()]
_GENERIC = ModelAdapter()


def register_adapter(adapter: ModelAdapter) -> None:
    """Add an adapter; it is tried before those registered earlier."""
    _ADAPTERS.insert(0, adapter)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``: the first registered one that handles it, else the generic one."""
    for adapter in _ADAPTERS:
        if adapter.handles(model):
            return adapter
    return _GENERIC


def adapter_for_description(description: dict[str, Any]) -> ModelAdapter:
    """The adapter that can rebuild a model from :meth:`ModelAdapter.describe`'s output."""
    arch = description.get("arch") if isinstance(description, dict) else None
    for adapter in _ADAPTERS:
        if adapter.arch == arch:
            return adapter
    known = ", ".join(a.arch for a in _ADAPTERS)
    raise QditError(f"unknown model kind {arch!r} in the checkpoint description (known: {known})")
