"""``qdit bench``: speed, memory and size of integer-kernel vs float models, all in one run on the same inputs.

1. **DiT-XL/2 blocks** (random weights: hidden 1152, 16 heads, 256 tokens per image): a DiT-XL/2 cut to
   ``--blocks`` blocks, one whole denoiser forward (embedders, blocks, final layer) timed in fp32, bf16,
   fake quantization and the integer kernels (W8A8 / W4A8, group 128 and per channel), and every
   linear of the first block alone on its own captured input. Quantized models run in bf16 around
   their integer products, as the bf16 model does.
2. **Memory and size** of a full DiT-XL/2-sized model (28 blocks; every block linear and adaLN
   quantized W4A8, group 128): the rise of peak resident memory over the memory before loading, in a
   fresh process that loads the model and runs one forward, against the same for bf16; the qdit
   folder against the fp16 state dict.
3. **The embedded model**: one denoiser forward in each configuration.

Speed ratios are best-of-``--repeats`` times, the configurations interleaved, against bf16 measured
in the same run. ``--quick``: fewer repeats, 2 blocks and a 4-block model for the memory part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GROUP = 128
CONFIGS: dict[str, tuple[int, int] | None] = {  # name -> (weight bits, group) of integer W?A8; None: float
    "fp32": None,
    "bf16": None,
    "W8A8 g128 fake": (8, GROUP),
    "W8A8 g128 int": (8, GROUP),
    "W4A8 g128 int": (4, GROUP),
    "W8A8 per-channel int": (8, 0),
    "W4A8 per-channel int": (4, 0),
    # the same integer models computing their products alone (the GELU after fc1 and the blocks' gated
    # residuals as the float models run them): how much of the gain is the fused epilogues
    "W8A8 g128 int, unfused": (8, GROUP),
    "W8A8 per-channel int, unfused": (8, 0),
}
UNFUSED = ", unfused"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench", help="speed, memory and size of integer-kernel vs float models (same inputs, same run)"
    )
    p.add_argument(
        "--model",
        default="embedded",
        help="the model of part 3: embedded, embedded-video, a DiT checkpoint or a diffusers folder",
    )
    p.add_argument("--arch", default=None)
    p.add_argument("--batch", type=int, default=8, help="images per DiT-XL/2 forward (256 tokens each)")
    p.add_argument("--blocks", type=int, default=None, help="DiT-XL/2 blocks in the timed stack (default 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per configuration (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--skip-memory", action="store_true", help="skip part 2 (memory and checkpoint size)")
    p.add_argument("--quick", action="store_true", help="2 blocks, 2 repeats, a 4-block memory model")
    p.add_argument("--json", default=None)
    return p


# --- models ------------------------------------------------------------------------------------
def xl_model(depth: int, seed: int = 0) -> Any:
    """A DiT-XL/2 with ``depth`` blocks and random weights (every linear, adaLN included, non-zero)."""
    import torch
    from torch import nn

    from qdit.models.dit import DiT, dit_config

    torch.manual_seed(seed)
    model = DiT(dit_config("DiT-XL/2", depth=depth), init_weights=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.normal_(m.bias, std=0.02)
    return model.eval()


def quantized(
    model: Any, w_bits: int, group: int, kernel: str, include: list[str] | None = None, fuse: bool = True
) -> Any:
    """A bf16 copy of ``model`` quantized W``w_bits``A8 (RTN, dynamic per-token activations) in
    ``group`` for every block linear and adaLN, on the kernel path ``kernel``; ``fuse=False``: every
    layer computes its product alone (:func:`qdit.nn.unfuse`)."""
    import copy

    import torch

    import qdit
    from qdit.nn import freeze, unfuse
    from qdit.recipe import QuantSpec, Recipe

    q = copy.deepcopy(model).to(torch.bfloat16)
    spec = QuantSpec(w_bits=w_bits, a_bits=8, w_group=group, a_group=group)
    qdit.quantize(q, Recipe(default=spec, include=["adaln"] if include is None else include))
    freeze(q, kernel)
    if not fuse:
        unfuse(q)
    return q


def make_variant(base: Any, name: str) -> Any:
    import copy

    import torch

    bits_group = CONFIGS[name]
    if bits_group is None:
        m = copy.deepcopy(base)
        return m.to(torch.bfloat16) if name == "bf16" else m
    return quantized(
        base, *bits_group, "fake" if name.endswith("fake") else "int", fuse=not name.endswith(UNFUSED)
    )


# --- timing ------------------------------------------------------------------------------------
def host_probe_ms(repeats: int = 20) -> float:
    """Best milliseconds of one bf16 matmul of DiT-XL/2's qkv shape (2048 x 1152 x 3456): how fast the
    host runs right now, recorded beside the ratios so that a run on a busy host can be recognised."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 1152, generator=g).bfloat16()
    w = torch.randn(3456, 1152, generator=g).bfloat16()
    best = float("inf")
    with torch.inference_mode():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            a @ w.T
            if i >= 3:
                best = min(best, time.perf_counter() - t0)
    return best * 1e3
def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best seconds per call of each function, the functions taking turns (drift hits all alike)."""
    for fn in calls.values():
        fn()  # warm-up
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def model_inputs(cfg: Any, batch: int, seed: int = 0) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    return x, t, y


def forward_fn(model: Any, inputs: tuple[Any, Any, Any], dtype: Any) -> Callable[[], object]:
    import torch

    x, t, y = inputs
    x = x.to(dtype)

    def run() -> object:
        with torch.inference_mode():
            return model(x, t, y)

    return run


def capture_linear_inputs(model: Any, inputs: tuple[Any, Any, Any], names: list[str]) -> dict[str, Any]:
    """The input of each named linear in one forward of ``model``."""
    import torch

    got: dict[str, Any] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            got.setdefault(name, args[0].detach().clone())

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        forward_fn(model, inputs, torch.bfloat16)()
    finally:
        for h in hooks:
            h.remove()
    return got


def bench_blocks(depth: int, batch: int, repeats: int, progress: bool = True) -> dict[str, Any]:
    """Part 1: end-to-end and per-layer times of every configuration on a ``depth``-block DiT-XL/2."""
    import torch
    from tqdm.auto import tqdm

    from qdit.models.adapter import get_adapter
    from qdit.nn import kernel_paths

    base = xl_model(depth)
    inputs = model_inputs(base.config, batch)
    models: dict[str, Any] = {}
    for name in tqdm(CONFIGS, desc="preparing models", leave=False, disable=not progress):
        models[name] = make_variant(base, name)
    calls = {
        n: forward_fn(m, inputs, torch.float32 if n == "fp32" else torch.bfloat16) for n, m in models.items()
    }
    # the integer outputs against fake quantization of the same integer weights
    with torch.inference_mode():
        fake = models["W8A8 g128 fake"](inputs[0].bfloat16(), inputs[1], inputs[2]).float()
        real = models["W8A8 g128 int"](inputs[0].bfloat16(), inputs[1], inputs[2]).float()
    agreement = float((real - fake).abs().max() / fake.abs().max().clamp(min=1e-12))
    times = time_interleaved(calls, repeats)
    block_linears = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"]
    names = [f"blocks.0.{n}" for n in block_linears]
    layer_inputs = capture_linear_inputs(models["bf16"], inputs, names)
    per_layer: dict[str, dict[str, float]] = {}
    for lname in tqdm(names, desc="per-layer timing", leave=False, disable=not progress):
        x = layer_inputs[lname]
        fns = {}
        for n, m in models.items():
            layer = m.get_submodule(lname)
            xin = x.float() if n == "fp32" else x

            def run(layer: Any = layer, xin: Any = xin) -> object:
                with torch.inference_mode():
                    return layer(xin)

            fns[n] = run
        per_layer[lname] = {n: s * 1e3 for n, s in time_interleaved(fns, repeats).items()}
    paths = sorted({p for n in ("W8A8 g128 int", "W4A8 g128 int") for p in kernel_paths(models[n]).values()})
    return {
        "depth": depth,
        "batch": batch,
        "tokens_per_image": get_adapter(base).tokens_per_sample(base),
        "forward_ms": {n: s * 1e3 for n, s in times.items()},
        "image_steps_per_s": {n: batch / s for n, s in times.items()},  # one denoiser forward per image and step
        "per_layer_ms": per_layer,
        "int_vs_fake_max_rel_diff": agreement,
        "integer_paths": paths,
    }


# --- memory (in a fresh process) -------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's peak resident memory since its ``exec`` (``VmHWM``; ``ru_maxrss`` would carry the
    parent's peak over a fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_probe(kind: str, path: str, batch: int) -> dict[str, int]:
    """Run in a fresh process: load the model at ``path`` (``bf16``: a bf16 state dict with a
    ``config.json`` beside it; ``qdit``: a quantized folder), run one forward, and report the rise of
    peak resident memory over the resident memory before loading."""
    import torch

    from qdit.io.safetensors_reader import read_all
    from qdit.models.dit import DiT, DiTConfig

    torch.set_num_threads(int(os.environ.get("QDIT_BENCH_THREADS", "0")) or torch.get_num_threads())
    root = Path(path)
    cfg = DiTConfig(**json.loads((root / "config.json").read_text()))
    inputs = model_inputs(cfg, batch)
    # one-time process costs that do not grow with the model, paid before the baseline in both probes:
    # the meta-device machinery (its first use imports a lot of Python) and the modules both loaders use
    import qdit.io.checkpoint  # noqa: F401
    from qdit.kernels.cpu import cpu_extension

    cpu_extension()
    with torch.device("meta"):
        DiT(DiTConfig(input_size=4, patch_size=2, hidden_size=64, depth=1, num_heads=2), init_weights=False)
    before = _rss_bytes()
    if kind == "bf16":
        with torch.device("meta"):
            model = DiT(cfg, init_weights=False)
        model.load_state_dict(read_all(root / "model.safetensors"), strict=True, assign=True)
    else:
        import qdit

        model = qdit.load(root / "qdit", kernel="auto").to(torch.bfloat16)
    forward_fn(model.eval(), inputs, torch.bfloat16)()
    return {"rss_before": before, "peak": _peak_rss_bytes(), "rise": _peak_rss_bytes() - before}


def _probe(kind: str, path: Path, batch: int, threads: int) -> dict[str, int]:
    code = (
        "import json, sys; from qdit.commands.bench import memory_probe; "
        f"print(json.dumps(memory_probe({kind!r}, {str(path)!r}, {batch})))"
    )
    env = dict(os.environ, QDIT_BENCH_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        from qdit.errors import QditError

        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise QditError(f"the memory probe ({kind}) failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(depth: int, batch: int, threads: int, progress: bool = True) -> dict[str, Any]:
    """Part 2: checkpoint size and peak memory of a W4A8 g128 model vs bf16 / fp16."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    import qdit
    from qdit.recipe import QuantSpec, Recipe

    steps = tqdm(total=4, desc="memory: building, quantizing, saving", leave=False, disable=not progress)
    model = xl_model(depth).to(torch.bfloat16)
    steps.update(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "config.json").write_text(json.dumps(model.config.to_dict()))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(root / "model.safetensors"))
        params = sum(p.numel() for p in model.parameters())
        fp16_bytes = 2 * sum(v.numel() for v in state.values())
        del state
        steps.update(1)
        spec = QuantSpec(w_bits=4, a_bits=8, w_group=GROUP, a_group=GROUP)
        qdit.quantize(model, Recipe(default=spec, include=["adaln"]))
        report = qdit.save(model, root / "qdit")
        del model
        steps.update(1)
        folder_bytes = sum(f.stat().st_size for f in (root / "qdit").iterdir())
        bf16 = _probe("bf16", root, batch, threads)
        w4a8 = _probe("qdit", root, batch, threads)
        steps.update(1)
        steps.close()
    return {
        "depth": depth,
        "batch": batch,
        "params": params,
        "fp16_state_dict_bytes": fp16_bytes,
        "w4a8_folder_bytes": folder_bytes,
        "w4a8_bits_per_quantized_weight": 8 * report["quantized_weight_bytes"] / (report["quantized_weight_bf16_bytes"] / 2),
        "bf16_peak_rise_bytes": bf16["rise"],
        "w4a8_peak_rise_bytes": w4a8["rise"],
    }


# --- the embedded model ------------------------------------------------------------------------
def bench_embedded(model_name: str, arch: str | None, batch: int, repeats: int) -> dict[str, Any]:
    """Part 3: one denoiser forward of ``model_name`` (any model with an adapter: embedded,
    embedded-video, a DiT checkpoint, a diffusers folder) in every configuration, on ``batch`` samples
    (images or clips) of its sample shape."""
    import torch

    from qdit.api import load_model
    from qdit.diffusion.sampler import is_clip_shape
    from qdit.models.adapter import get_adapter
    from qdit.quant.rules import divides

    base = load_model(model_name, arch)
    adapter = get_adapter(base)
    shape, classes = adapter.sampling_geometry(base)
    widths = adapter.layer_widths(base).values()
    group = next((g for g in (GROUP, 64, 32) if all(divides(g, w) for w in widths)), 0)
    include = ["adaln"] if "adaln" in adapter.layer_groups(base) else []
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(batch, *shape, generator=g),
        torch.randint(0, 1000, (batch,), generator=g),
        torch.randint(0, classes, (batch,), generator=g),
    )
    models = {}
    for name, bg in CONFIGS.items():
        if bg is None:
            models[name] = make_variant(base, name)
        else:
            kernel = "fake" if name.endswith("fake") else "int"
            models[name] = quantized(base, bg[0], bg[1] and group, kernel, include, fuse=not name.endswith(UNFUSED))
    calls = {
        n: forward_fn(adapter.model_fn(m), inputs, torch.float32 if n == "fp32" else torch.bfloat16)
        for n, m in models.items()
    }
    times = time_interleaved(calls, repeats)
    return {
        "model": model_name, "batch": batch, "kind": "clips" if is_clip_shape(shape) else "images", "group": group,
        "forward_ms": {n: s * 1e3 for n, s in times.items()},
    }  # fmt: skip


# --- the command -------------------------------------------------------------------------------
def _ratio(times: dict[str, float], name: str) -> float:
    return times["bf16"] / times[name]


def run(args: argparse.Namespace) -> int:
    import torch

    from qdit.errors import QditError
    from qdit.io.atomic import check_outputs, write_json

    check_outputs({"--json": args.json})
    if args.batch < 1:
        raise QditError(f"--batch must be >= 1, got {args.batch}")
    depth = args.blocks if args.blocks is not None else 2 if args.quick else 4
    repeats = args.repeats if args.repeats is not None else 2 if args.quick else 5
    if depth < 1 or repeats < 1:
        raise QditError("--blocks and --repeats must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise QditError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from qdit.kernels.linear import available_paths

    machine = (
        f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}, "
        + f"integer paths available: {', '.join(available_paths())}"
    )
    host_before = host_probe_ms()
    blocks = bench_blocks(depth, args.batch, repeats)
    host_after = host_probe_ms()
    fwd = blocks["forward_ms"]
    result: dict[str, Any] = {
        "machine": machine,
        # the same bf16 matmul before and after the timed part: a host busy with other work (other
        # jobs, or a noisy neighbour on a shared machine) shows as a slower or changing probe
        "host_probe_bf16_matmul_ms": {"before": host_before, "after": host_after},
        "blocks": blocks,
        "w8a8_int_vs_bf16_speedup": _ratio(fwd, "W8A8 g128 int"),
        "w4a8_int_vs_bf16_speedup": _ratio(fwd, "W4A8 g128 int"),
        "w8a8_perchannel_int_vs_bf16_speedup": _ratio(fwd, "W8A8 per-channel int"),
        "w4a8_perchannel_int_vs_bf16_speedup": _ratio(fwd, "W4A8 per-channel int"),
        "w8a8_fake_vs_bf16_speedup": _ratio(fwd, "W8A8 g128 fake"),
        "w8a8_int_unfused_vs_bf16_speedup": _ratio(fwd, "W8A8 g128 int" + UNFUSED),
        "w8a8_perchannel_int_unfused_vs_bf16_speedup": _ratio(fwd, "W8A8 per-channel int" + UNFUSED),
    }
    print(f"DiT-XL/2, {depth} blocks, {args.batch} images x {blocks['tokens_per_image']} tokens; best of {repeats}; {machine}")
    print(
        f"host probe (bf16 matmul 2048x1152x3456, best of 20): {host_before:.2f} ms before, {host_after:.2f} ms "
        "after (a busy host shows here: compare runs with similar probes)"
    )
    print("| configuration | forward ms | image-steps/s | vs bf16 |")
    print("|---|---|---|---|")
    for n, ms in fwd.items():
        print(f"| {n} | {ms:.1f} | {blocks['image_steps_per_s'][n]:.1f} | {_ratio(fwd, n):.2f}x |")
    print("per layer (block 0), ms:")
    print("| layer | " + " | ".join(CONFIGS) + " |")
    print("|---" * (len(CONFIGS) + 1) + "|")
    for lname, row in blocks["per_layer_ms"].items():
        print(f"| {lname.removeprefix('blocks.0.')} | " + " | ".join(f"{row[n]:.2f}" for n in CONFIGS) + " |")
    print(
        f"integer paths: {', '.join(blocks['integer_paths'])}; integer vs fake quantization of the same "
        f"weights: max relative difference {blocks['int_vs_fake_max_rel_diff']:.1e}"
    )
    if not args.skip_memory:
        mem_depth = 4 if args.quick else 28
        mem = bench_memory(mem_depth, args.batch, threads)
        result["memory"] = mem
        result["w4a8_size_ratio_vs_fp16"] = mem["w4a8_folder_bytes"] / mem["fp16_state_dict_bytes"]
        result["w4a8_mem_ratio_vs_bf16"] = mem["w4a8_peak_rise_bytes"] / mem["bf16_peak_rise_bytes"]
        print(
            f"DiT-XL/2-sized, {mem_depth} blocks ({mem['params'] / 1e6:.0f}M parameters), W4A8 g128: checkpoint "
            f"{mem['w4a8_folder_bytes'] / 2**20:.0f} MB vs fp16 {mem['fp16_state_dict_bytes'] / 2**20:.0f} MB "
            f"({result['w4a8_size_ratio_vs_fp16']:.3f}x, {mem['w4a8_bits_per_quantized_weight']:.2f} bits per "
            f"quantized weight); peak memory rise loading + one forward {mem['w4a8_peak_rise_bytes'] / 2**20:.0f} MB "
            f"vs bf16 {mem['bf16_peak_rise_bytes'] / 2**20:.0f} MB ({result['w4a8_mem_ratio_vs_bf16']:.3f}x)"
        )
    emb = bench_embedded(args.model, args.arch, 64, repeats)
    result["embedded"] = emb
    e = emb["forward_ms"]
    print(
        f"{args.model} (64 {emb['kind']}, group {emb['group']}): "
        + ", ".join(f"{n} {ms:.1f} ms ({_ratio(e, n):.2f}x)" for n, ms in e.items())
    )
    if args.json:
        write_json(args.json, result)
    return 0
