"""Swapping ``nn.Linear`` layers for :class:`QuantLinear` by per-layer specs, and choosing each quantized
layer's kernel path (:func:`freeze`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from qdit.errors import QditError
from qdit.nn.quant_linear import FAKE, QuantLinear
from qdit.quant.activation import ActLayout
from qdit.quant.stats import LayerStats
from qdit.quant.weight import WEIGHT_SCALE_DTYPE
from qdit.recipe import QuantSpec


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (``setattr`` on its parent)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """Every :class:`QuantLinear` of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@torch.no_grad()
def swap_layers(
    model: nn.Module,
    specs: Mapping[str, QuantSpec],
    stats: Mapping[str, LayerStats] | None = None,
    *,
    factory: LayerFactory | None = None,
    scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
    prefix: str = "",
    progress: bool = False,
    layouts: Mapping[str, ActLayout] | None = None,
) -> dict[str, QuantLinear]:
    """Replace each named ``nn.Linear`` by a :class:`QuantLinear` quantized with its spec, in place.

    ``stats`` maps layer names to calibration statistics (required for GPTQ / static / smoothing specs).
    ``factory(linear, spec, stats, name)`` builds each quantized layer (default
    :meth:`QuantLinear.from_linear`; the search passes one that keeps alternative weights). ``layouts``
    maps layer names to the clip/frame layout of their inputs (:meth:`QuantLinear.set_layout`), as the
    caller got it from the model's adapter; layers it does not name have none. ``prefix`` is prepended to
    the layer names in messages and in ``layouts`` look-ups (when ``model`` is a submodule). A failure
    leaves ``model`` as it was.
    """
    modules = dict(model.named_modules())
    for name in specs:
        mod = modules.get(name)
        if mod is None:
            raise QditError(f"the model has no layer {prefix + name!r}")
        if not isinstance(mod, nn.Linear):
            raise QditError(f"layer {prefix + name!r} is a {type(mod).__name__}, not an nn.Linear")
    make = factory or default_factory(scale_dtype)
    items = list(specs.items())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="quantizing", unit="layer", leave=False)
    out: dict[str, QuantLinear] = {}
    try:  # quantize every layer first, so that a failure leaves the model as it was
        for name, spec in items:
            layer_stats = stats.get(name) if stats is not None else None
            out[name] = make(modules[name], spec, layer_stats, prefix + name)  # type: ignore[arg-type]
            out[name].set_layout(layouts.get(prefix + name) if layouts is not None else None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    for name, layer in out.items():
        set_submodule(model, name, layer)
    return out


KERNELS = ("auto", "int", FAKE)


def choose_kernel(layer: QuantLinear, kernel: str = "auto") -> str:
    """The path ``layer`` should run under the policy ``kernel``.

    ``fake``: dequantized weights and a float matmul (the reference). ``int``: an integer kernel, or an
    error saying why the layer cannot. ``auto``: an integer kernel where the layer's spec allows it
    (integer activations, at most 8 bits, nesting groups), the faster path measured per shape; fake
    quantization elsewhere.
    """
    from qdit.kernels.linear import best_path

    if kernel not in KERNELS:
        raise QditError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    if kernel == FAKE:
        return FAKE
    why = layer.integer_blocker()
    if why is not None:
        if kernel == "int":
            raise QditError(f"layer {layer.name} cannot run an integer kernel: {why} (use --kernel auto or fake)")
        return FAKE
    act = layer.act_spec()
    assert act is not None
    return best_path(layer.int_weight(), act, layer.weight_scale.device)


def freeze(model: nn.Module, kernel: str = "auto") -> dict[str, str]:
    """Put every quantized layer on the path :func:`choose_kernel` picks (its weight in that path's
    layout); returns the path per layer name. All layers are checked before any changes."""
    layers = quant_layers(model)
    paths = {name: choose_kernel(layer, kernel) for name, layer in layers.items()}
    for name, layer in layers.items():
        layer.set_kernel(paths[name])
    return paths


class FusedActivation(nn.Identity):
    """Where an activation module was before :func:`fuse` moved it into the preceding quantized linear
    (which now applies it to its output): the identity, named for the printout. It keeps a plain (not
    registered) reference to that linear, so :func:`unfuse` works from any module that holds both."""

    def __init__(self, activation: str, into: str, linear: QuantLinear) -> None:
        super().__init__()
        self.activation, self.into = activation, into
        object.__setattr__(self, "linear", linear)  # not a submodule: no second copy in the state dict

    def extra_repr(self) -> str:
        return f"{self.activation}, fused into {self.into}"


# the activation modules a quantized layer can take over, by the name qdit.kernels.linear.ACTIVATIONS uses
_FUSABLE: dict[str, Callable[[], nn.Module]] = {"gelu_tanh": lambda: nn.GELU(approximate="tanh")}


def _fusable(act: nn.Module) -> str | None:
    """The output activation ``act`` computes, if a quantized layer can compute it."""
    if type(act) is nn.GELU and act.approximate == "tanh":
        return "gelu_tanh"
    return None


def fuse(model: nn.Module, pairs: list[tuple[str, str]]) -> list[str]:
    """Let the quantized layers of ``model`` do the elementwise work next to their products.

    Each ``(linear name, activation module name)`` of ``pairs`` names a linear whose output goes only
    through that activation module (the model's adapter knows which,
    :meth:`qdit.models.adapter.ModelAdapter.activation_pairs`): the linear then applies the activation
    to its output on every path (in the AMX kernel's epilogue: no pass over the output in memory) and the
    module becomes a :class:`FusedActivation`. Pairs whose linear is not quantized, or whose activation a
    layer cannot apply, are left alone. Every quantized layer may also take a gated residual and its
    input's adaLN transform from its block again (:meth:`QuantLinear.takes_gated_residual`,
    :meth:`QuantLinear.takes_ada_norm`). Returns the linears that took an activation."""
    for layer in quant_layers(model).values():
        layer.fusion = True
    fused = []
    for lin_name, act_name in pairs:
        lin, act = model.get_submodule(lin_name), model.get_submodule(act_name)
        kind = _fusable(act)
        if not isinstance(lin, QuantLinear) or kind is None or lin.activation is not None:
            continue
        lin.activation = kind
        set_submodule(model, act_name, FusedActivation(kind, lin_name, lin))
        fused.append(lin_name)
    return fused


def unfuse(model: nn.Module) -> list[str]:
    """Every quantized layer of ``model`` computes its product alone again: each :class:`FusedActivation`
    becomes its module again (its linear stops applying it), and no layer takes a gated residual or an
    adaLN transform of its input. Works
    on any module holding both the activations and their linears (a block, a wrapper). Returns the names
    (as given to :func:`fuse`) of the linears that gave back an activation."""
    found = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, FusedActivation)]
    for layer in quant_layers(model).values():
        layer.fusion = False
    for name, mod in found:
        lin = mod.linear  # type: ignore[attr-defined]
        lin.activation = None
        set_submodule(model, name, _FUSABLE[mod.activation]())
    return [mod.into for _, mod in found]


def kernel_paths(model: nn.Module) -> dict[str, str]:
    """The path each quantized layer of ``model`` runs."""
    return {name: layer.kernel for name, layer in quant_layers(model).items()}


def kernel_summary(model: nn.Module) -> str:
    """One line: how many layers run each path, and why the fake ones are not integer."""
    layers = quant_layers(model)
    counts: dict[str, int] = {}
    for layer in layers.values():
        counts[layer.kernel] = counts.get(layer.kernel, 0) + 1
    text = ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    fused = sorted({layer.activation for layer in layers.values() if layer.activation})
    if fused:
        n = sum(1 for layer in layers.values() if layer.activation)
        text += f"; {', '.join(fused)} fused into {n} layer{'s' if n > 1 else ''}"
    if counts.get(FAKE):
        reasons = sorted({layer.integer_blocker() or "by request" for layer in layers.values() if layer.kernel == FAKE})
        text += f" (fake: {'; '.join(reasons)})"
    return f"kernels: {text}"


LayerFactory = Callable[[nn.Linear, QuantSpec, LayerStats | None, str], QuantLinear]


def default_factory(scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE) -> LayerFactory:
    def make(linear: nn.Linear, spec: QuantSpec, stats: LayerStats | None, name: str) -> QuantLinear:
        return QuantLinear.from_linear(linear, spec, stats, scale_dtype=scale_dtype, name=name)

    return make
