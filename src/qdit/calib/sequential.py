"""Block-by-block quantization: each block is calibrated on the outputs of the already-quantized blocks.

The inputs of the first block are recorded (a forward pre-hook) while the float model samples a few
trajectories. Then, block after block: the float block runs on its recorded inputs with hooks on its
linears (Hessians, ranges), its layers are quantized, and the quantized block runs again to produce the
next block's inputs. So GPTQ and static ranges see the inputs the layers will really get. Blocks must be
called as ``block(x, *rest, **kwargs) -> x`` in sequence (``rest`` unchanged), as the model adapter
promises when it lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from qdit.calib.capture import capture
from qdit.calib.stats import Calibration
from qdit.errors import QditError
from qdit.recipe import QuantSpec

BlockInputs = list[tuple[tuple[Any, ...], dict[str, Any]]]


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def record_block_inputs(
    model: nn.Module, block: str, run: Callable[[], object], layers: Iterable[str] = (), **capture_kw: Any
) -> tuple[BlockInputs, Calibration]:
    """The ``(args, kwargs)`` of every call of ``block`` while ``run()`` drives ``model``, plus the
    statistics of ``layers`` (outside the blocks) captured in the same run."""
    store: BlockInputs = []

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        store.append((tuple(_detach(a) for a in args), {k: _detach(v) for k, v in kwargs.items()}))

    handle = model.get_submodule(block).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        calib = capture(model, layers, run, **capture_kw)
    finally:
        handle.remove()
    if not store:
        raise QditError(f"calibration: block {block!r} never ran")
    return store, calib


@torch.no_grad()
def quantize_sequential(
    model: nn.Module,
    specs: Mapping[str, QuantSpec],
    blocks: Sequence[str],
    run: Callable[[], object],
    swap: Callable[[nn.Module, Mapping[str, QuantSpec], Mapping[str, Any] | None, str], object],
    *,
    max_rows: int = 2048,
    seed: int = 0,
    progress: bool = False,
) -> None:
    """Quantize ``specs`` (qualified names) block by block; ``swap(module, specs, stats, prefix)`` swaps
    the layers of one module (names relative to it, ``prefix`` its qualified name plus a dot). Layers outside ``blocks`` are calibrated on the float
    model. On error every swapped layer is put back, so the model is left as it was."""
    from qdit.nn.swap import set_submodule

    outside = [n for n in specs if not any(n.startswith(b + ".") for b in blocks)]
    need_out = [n for n in outside if specs[n].needs_calibration]
    hess_out = [n for n in need_out if specs[n].needs_hessian]
    originals = {n: model.get_submodule(n) for n in specs}
    inputs, outside_stats = record_block_inputs(
        model, blocks[0], run, need_out, hessian_layers=hess_out, max_rows=max_rows, seed=seed
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(blocks), desc="quantizing blocks", unit="block", leave=False)
    try:
        for i, name in enumerate(blocks):
            block = model.get_submodule(name)
            prefix = name + "."
            local = {n[len(prefix) :]: s for n, s in specs.items() if n.startswith(prefix)}
            need = [n for n, s in local.items() if s.needs_calibration]
            stats = None
            if need:
                hess = [n for n in need if local[n].needs_hessian]

                def replay(block: nn.Module = block, calls: BlockInputs = inputs) -> None:
                    for args, kwargs in calls:
                        block(*args, **kwargs)

                stats = capture(
                    block, need, replay, hessian_layers=hess, max_rows=max_rows, seed=seed + 7919 * i
                )
            if local:
                swap(block, local, stats, prefix)
            if i + 1 < len(blocks):
                inputs = [((block(*args, **kwargs), *args[1:]), kwargs) for args, kwargs in inputs]
            if bar is not None:
                bar.update(1)
        if outside:
            swap(model, {n: specs[n] for n in outside}, outside_stats, "")
    except BaseException:
        for n, module in originals.items():
            set_submodule(model, n, module)
        raise
    finally:
        if bar is not None:
            bar.close()
