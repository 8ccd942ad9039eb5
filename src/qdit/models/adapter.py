"""Model adapters: the architecture knowledge the quantizer needs, kept out of the quantizer.

An adapter says which linear layers of a model are quantized by default and which named optional groups
exist (``"adaln"`` for our DiT), how to describe the model so that a saved quantized checkpoint can
rebuild it without its float weights, and what the sampler needs to drive it (sample shape, classes,
forward, noise schedule; the sampling itself lives in :mod:`qdit.diffusion`).
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from qdit.errors import QditError
from qdit.quant.activation import ActLayout


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

    def activation_layout(self, model: nn.Module) -> dict[str, ActLayout]:
        """``{linear name: layout}``: how the leading dims of each linear's input split into samples and
        frames (:class:`qdit.quant.activation.ActLayout`), for the ``sample`` and ``frame`` activation
        granularities. Empty for image models: their samples are the first dim of every input."""
        return {}

    def describe(self, model: nn.Module) -> dict[str, Any] | None:
        """A JSON-able description from which :meth:`build` recreates the model; ``None`` if unsupported."""
        return None

    def activation_pairs(self, model: nn.Module) -> list[tuple[str, str]]:
        """``(linear name, activation module name)`` pairs where the linear's output goes only through that
        activation module: :func:`qdit.nn.fuse` moves the activation into the quantized
        linear (the AMX kernel applies it before writing). None known for a generic model."""
        return []

    def build(self, description: dict[str, Any]) -> nn.Module:
        """The model of ``description`` (with uninitialized weights; called on the meta device by loaders)."""
        raise QditError(f"qdit cannot rebuild a model of kind {description.get('arch')!r}")

    # --- sampling: how qdit's sampler drives the model -------------------------------------------
    def image_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        """The sample shape, channels first: ``(C, H, W)`` of the images or latents the model denoises, or
        ``(C, T, H, W)`` of the clips a video model denoises; ``None`` if unknown."""
        return None

    def tokens_per_sample(self, model: nn.Module) -> int | None:
        """Tokens each linear sees per sample (image or clip), for the search's cost model; ``None`` if
        unknown."""
        return None

    def num_classes(self, model: nn.Module) -> int | None:
        """The number of class labels (``0..n-1``) the sampler may ask for; ``None`` if unknown."""
        return None

    def has_null_class(self, model: nn.Module) -> bool:
        """Whether label ``num_classes`` means "no class" (the unconditional half of guidance)."""
        return False

    def model_fn(
        self, model: nn.Module
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """``fn(x, t, y) -> output`` (noise prediction first, then any variance channels) over ``model``'s
        own forward signature; ``y == num_classes`` asks for the unconditional output."""
        return model

    def noise_schedule(self, model: nn.Module) -> dict[str, Any] | None:
        """The training noise schedule as a diffusers-style scheduler config (``num_train_timesteps``,
        ``beta_schedule``, ``beta_start``, ``beta_end``); ``None`` for qdit's default linear 1000 steps."""
        return None

    def decoder(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``decode(samples) -> images in [-1, 1]`` for a latent model (its VAE, when one was given or its
        pipeline folder has one); ``None`` when the samples are images already or no VAE is known."""
        path = getattr(model, "qdit_vae", None)
        if path is None:
            return None
        from qdit.models.vae import vae_decoder

        return vae_decoder(path)

    def sampling_geometry(self, model: nn.Module) -> tuple[tuple[int, ...], int]:
        """``(sample shape, num_classes)`` (see :meth:`image_shape`), or a one-line error naming what the
        adapter does not know."""
        shape, classes = self.image_shape(model), self.num_classes(model)
        if shape is None or classes is None:
            raise QditError(
                f"qdit does not know how to sample from a {type(model).__name__}; capture calibration data "
                "with qdit.calib.capture(model, layers, run) and your own run function, or use "
                "qdit.models.adapter.PatternAdapter with a calibration callable"
            )
        return shape, classes

    def check_cfg_scale(self, model: nn.Module, cfg_scale: float) -> None:
        if cfg_scale != 1.0 and not self.has_null_class(model):
            raise QditError(
                f"this {type(model).__name__} has no null class label, so classifier-free guidance is "
                "impossible; use a guidance scale of 1"
            )

    def calibration_driver(self, model: nn.Module) -> Callable[[], object] | None:
        """A callable that runs ``model`` on representative inputs for calibration hooks, when the adapter
        has its own; ``None`` (the default): qdit's sampler drives it over a few trajectories, from this
        adapter's shape, classes, forward and noise schedule (:mod:`qdit.diffusion.calibration`)."""
        return None


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

    def activation_pairs(self, model: nn.Module) -> list[tuple[str, str]]:
        from qdit.models.dit import Mlp

        # Mlp.forward is fc2(act(fc1(x))): fc1's output feeds act alone
        return [(f"{n}.fc1", f"{n}.act") for n, m in model.named_modules() if isinstance(m, Mlp)]

    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc: dict[str, Any] = {"arch": self.arch, "config": model.config.to_dict()}  # type: ignore[union-attr]
        for key in ("source", "vae"):
            value = getattr(model, f"qdit_{key}", None)
            if value is not None:
                desc[key] = str(value)
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
        for key in ("source", "vae"):
            if key in description:
                object.__setattr__(model, f"qdit_{key}", description[key])
        return model

    def image_shape(self, model: nn.Module) -> tuple[int, int, int]:
        cfg = model.config  # type: ignore[union-attr]
        return (int(cfg.in_channels), int(cfg.input_size), int(cfg.input_size))

    def num_classes(self, model: nn.Module) -> int:
        return int(model.config.num_classes)  # type: ignore[union-attr]

    def tokens_per_sample(self, model: nn.Module) -> int:
        return int(model.config.num_patches)  # type: ignore[union-attr]

    def has_null_class(self, model: nn.Module) -> bool:
        # with label dropout the table has num_classes + 1 rows (official DiT); the last one is "no class"
        return float(model.config.class_dropout_prob) > 0  # type: ignore[union-attr]


class PatternAdapter(ModelAdapter):
    """Any ``nn.Module``: its linears chosen by name patterns, driven by a calibration callable.

    ``patterns``: ``fnmatch`` patterns of the qualified names quantized by default (``"*"``: every
    ``nn.Linear``); ``optional_groups``: named extra sets a recipe can ``include``; ``calibrate(model)``:
    runs the model on representative inputs (needed only by specs that calibrate: GPTQ, static scales,
    smoothing); ``blocks``: qualified names of blocks called in sequence as ``block(x, *rest, **kw) -> x``
    (enables block-by-block calibration); ``factory``: the name of a model factory registered with
    :func:`register_factory` and ``factory_kwargs`` its JSON-able arguments, so that :func:`qdit.save` /
    :func:`qdit.load` can rebuild the model (nothing is imported by name from a checkpoint).

    Attach it to a model with :func:`attach_adapter`; :func:`get_adapter` then returns it for that model.
    """

    arch = "pattern"

    def __init__(
        self,
        patterns: tuple[str, ...] | list[str] = ("*",),
        *,
        calibrate: Callable[[nn.Module], object] | None = None,
        optional_groups: dict[str, tuple[str, ...] | list[str]] | None = None,
        blocks: list[str] | None = None,
        factory: str | None = None,
        factory_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(patterns, str):
            patterns = (patterns,)
        self.default_patterns = tuple(patterns)
        self.optional_groups = {k: tuple(v) for k, v in (optional_groups or {}).items()}
        self.calibrate = calibrate
        self.blocks = list(blocks) if blocks is not None else None
        self.factory = factory
        self.factory_kwargs = dict(factory_kwargs or {})

    def handles(self, model: nn.Module) -> bool:
        return False  # only for the models it is attached to

    def block_names(self, model: nn.Module) -> list[str] | None:
        return self.blocks

    def describe(self, model: nn.Module) -> dict[str, Any] | None:
        if self.factory is None:
            return None
        return {
            "arch": self.arch, "factory": self.factory, "kwargs": self.factory_kwargs,
            "patterns": list(self.default_patterns),
            "optional_groups": {k: list(v) for k, v in self.optional_groups.items()}, "blocks": self.blocks,
        }  # fmt: skip

    def build(self, description: dict[str, Any]) -> nn.Module:
        name = description.get("factory")
        if name not in _FACTORIES:
            raise QditError(
                f"no model factory {name!r} is registered; call qdit.models.register_factory({name!r}, fn) "
                "before loading this checkpoint"
            )
        kwargs = description.get("kwargs") or {}
        model = _FACTORIES[name](**kwargs)
        adapter = PatternAdapter(
            description.get("patterns") or ("*",), optional_groups=description.get("optional_groups") or {},
            blocks=description.get("blocks"), factory=name, factory_kwargs=kwargs,
        )  # fmt: skip
        return attach_adapter(model, adapter)

    def calibration_driver(self, model: nn.Module) -> Callable[[], object] | None:
        if self.calibrate is None:
            return None
        calibrate = self.calibrate
        return lambda: calibrate(model)


_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_factory(name: str, fn: Callable[..., nn.Module]) -> None:
    """Register ``fn(**kwargs) -> nn.Module`` under ``name`` for rebuilding models of a :class:`PatternAdapter`."""
    _FACTORIES[name] = fn


def attach_adapter(model: nn.Module, adapter: ModelAdapter) -> nn.Module:
    """Make ``adapter`` the adapter of ``model`` (kept with the module; returns ``model``)."""
    object.__setattr__(model, "qdit_adapter", adapter)
    return model


_ADAPTERS: list[ModelAdapter] = [DiTAdapter(), PatternAdapter()]
_GENERIC = ModelAdapter()


def register_adapter(adapter: ModelAdapter) -> None:
    """Add an adapter; it is tried before those registered earlier."""
    _ADAPTERS.insert(0, adapter)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``: the one attached to it (:func:`attach_adapter`), else the first
    registered one that handles it, else the generic one."""
    attached = getattr(model, "qdit_adapter", None)
    if isinstance(attached, ModelAdapter):
        return attached
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
