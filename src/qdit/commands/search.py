"""``qdit search``: per-layer group sizes (automatic granularity allocation) -> a recipe JSON.

The recipe (``--out``) is what ``qdit quantize --recipe`` applies. The search state is saved after
every evaluation (``--state``, default ``<out>.state.json``); ``--resume`` continues an interrupted
search without evaluating anything twice. Under ``torchrun`` the candidates are spread over the
ranks and rank 0 writes every file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qdit.commands.common import add_cfg_channels
from qdit.quant.rules import WEIGHT_METHODS, bits_range, parse_act_granularity
from qdit.recipe import DYNAMIC_GRANULARITIES

DEFAULT_SAMPLES = 64
DEFAULT_STEPS = 20
# the search measures candidates without calibrating them: only dynamic activations, no Hessian
SEARCH_WEIGHT_METHODS = tuple(n for n, m in WEIGHT_METHODS.items() if not m.needs_hessian)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "search",
        help="search per-layer group sizes under a budget (cheap search by default) -> recipe.json",
        description=(
            "Search one group size per quantized linear (weights and input activations), as Q-DiT's "
            "automatic granularity allocation, under a cost budget. The fitness is the Fréchet distance of "
            "generated samples (domain features for the embedded model, Inception FID otherwise)."
        ),
    )
    p.add_argument("--model", default="embedded", help="'embedded' or a DiT checkpoint file (with --arch)")
    p.add_argument(
        "--arch", default=None, help="architecture of a checkpoint: DiT-XL/2, or JSON of DiTConfig fields"
    )
    p.add_argument("--w-bits", type=int, default=4, help=f"weight bits, {bits_range()} (default 4)")
    p.add_argument("--a-bits", type=int, default=8, help=f"activation bits, {bits_range()} (default 8)")
    p.add_argument(
        "--method",
        default="cheap",
        help="cheap (default: a tenth of the paper's cost, see --strategy) or full (the paper's evolutionary search)",
    )
    p.add_argument(
        "--strategy",
        choices=("gradient", "bayes"),
        default=None,
        help="cheap search: gradient (the default: rounds around the best genome so far, predicted by a "
        "first-order sensitivity from one backward pass through the sampler; needs differentiable "
        "features, else bayes) or bayes (Bayesian optimisation on an additive surrogate)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="cheap search, gradient: candidates measured per round (default 4)",
    )
    p.add_argument(
        "--cheap-budget",
        type=int,
        default=None,
        help="cheap search, gradient: its cost in N-sample evaluations' worth of model forwards, "
        "sensitivity passes included (default 48, under a tenth of the paper's 500 evaluations)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-group",
        type=float,
        default=None,
        help="budget: mean group size >= G (default 128, or the coarsest group every layer has)",
    )
    budget.add_argument(
        "--budget-bpw",
        type=float,
        default=None,
        help="budget: bits per weight (scales and zero points included) <= X",
    )
    p.add_argument(
        "--choices",
        default="paper",
        help="group sizes a layer may take: paper (default: the paper's and the authors' 32,64,128,192,288, "
        "those that divide the layer's input width), width (derived from each layer's width, e.g. "
        "128..1152 for DiT-XL/2's fc2), or a list such as 32,64,128,256 (the divisors among them)",
    )
    p.add_argument(
        "--layer-choices",
        default=None,
        help='per-layer group sizes: a JSON file {"blocks.0.mlp.fc2": [128, 256, 512], ...}; the layers it '
        "names take exactly these (each must divide the layer's width), the others --choices",
    )
    p.add_argument("--separate-act", action="store_true", help="search the activation group as its own gene")
    p.add_argument("--bits-choices", default=None, help="mixed precision: weight bits as a gene, e.g. 4,6,8")
    p.add_argument(
        "--act-granularity", default="token", help=f"{' | '.join(DYNAMIC_GRANULARITIES)} (default token)"
    )
    p.add_argument(
        "--weight-method", default="rtn", help=f"{' | '.join(SEARCH_WEIGHT_METHODS)} (default rtn, as the paper)"
    )
    p.add_argument("--symmetric", action="store_true", help="symmetric weight and activation quantizers")
    p.add_argument("--w-symmetric", action="store_true", help="symmetric weight quantizers (as --w_sym)")
    p.add_argument("--a-symmetric", action="store_true", help="symmetric activation quantizers (as --a_sym)")
    p.add_argument(
        "--num-samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"samples per fitness evaluation (default {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps per sample (default {DEFAULT_STEPS})"
    )
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance scale (default 1.5)")
    add_cfg_channels(p, what="guidance of the fitness samples")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--sensitivity-backward",
        choices=("auto", "graph", "steps"),  # qdit.search.fitness.BACKWARDS (tested)
        default="auto",
        help="cheap search, gradient strategy: backpropagate through the sampler over one graph of all steps "
        "(graph: fastest), or one step's graph at a time (steps: one more forward, the memory of one step); "
        "auto (default): steps for video models",
    )
    p.add_argument("--population", type=int, default=50, help="full search: population (default 50)")
    p.add_argument("--top-k", type=int, default=10, help="full search: parents kept (default 10)")
    p.add_argument(
        "--generations",
        type=int,
        default=10,
        help="full search: epochs after the initial population (default 10: 50 + 10 x 50 = 550 evaluations)",
    )
    p.add_argument(
        "--crossovers",
        type=int,
        default=None,
        help="full search: crossover children per epoch (default half the population; the authors' script: 15)",
    )
    p.add_argument(
        "--mutations",
        type=int,
        default=None,
        help="full search: mutation children per epoch (default the other half; the authors' script: 25); "
        "the rest of a population is random",
    )
    p.add_argument(
        "--lofi-batch",
        type=int,
        default=None,
        help="cheap search: candidates measured per round (default 4)",
    )
    p.add_argument("--lofi-rounds", type=int, default=None, help="cheap search: rounds (default 10)")
    p.add_argument(
        "--lofi-samples",
        type=int,
        default=None,
        help="cheap search: samples per measurement in the rounds (default N; fewer: a low-fidelity "
        "measurement, the best then measured with N by successive halving)",
    )
    p.add_argument(
        "--lofi-measure",
        choices=("fit", "fidelity"),
        default=None,
        help="cheap search: what the rounds measure: the fitness (fit, the default) or the distance to "
        "the float model's samples drawn with the same noise (fidelity)",
    )
    p.add_argument(
        "--acquisition",
        choices=("thompson", "greedy"),
        default=None,
        help="cheap search: how a round is chosen on the additive surrogate: each candidate optimises a "
        "draw from its posterior (thompson, the default) or the best of its mean (greedy)",
    )
    p.add_argument(
        "--screen",
        action="store_true",
        help="cheap search: screen every single-layer change with the noise-prediction proxy first (no "
        "images; the surrogate's prior and the first round's candidates)",
    )
    p.add_argument(
        "--shortlist",
        type=int,
        default=None,
        help="cheap search: the best measured candidates taken to all samples at the end, when the "
        "rounds measure fewer (default 4)",
    )
    p.add_argument(
        "--exploit",
        type=int,
        default=None,
        help="cheap search: the final round, the best unmeasured genomes of the surrogate's mean (default 9)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of the fitness samples")
    p.add_argument(
        "--features",
        default="auto",
        help="auto | domain | inception | clipnet (auto: domain for 28x28 grayscale models, clipnet (FVD) for "
        "the embedded video model)",
    )
    p.add_argument(
        "--inception-mode",
        choices=("fp32", "bf16", "fast", "compile"),  # qdit.eval.inception.INCEPTION_MODES (tested)
        default=None,
        help="--features inception: how its features are computed, as qdit eval --inception-mode (default "
        "fast, as there; fp32 the reference network; the sensitivity pass differentiates fp32 in every mode)",
    )
    p.add_argument(
        "--fitness",
        default="fd",
        help="fd: Fréchet distance to the reference data (--ref; the paper's FID) | fd-fp: to the float "
        "model's samples drawn with the same noise (paired: far less noisy with few samples)",
    )
    p.add_argument(
        "--ref", default=None, help="reference: fashion-mnist-test (default for domain) or a reference .npz"
    )
    p.add_argument(
        "--heldout-seeds",
        default=None,
        help="also measure the winner and the uniform baseline on these sample seeds, e.g. 101,102,103",
    )
    p.add_argument(
        "--heldout-samples",
        type=int,
        default=None,
        help="samples per held-out measurement (default --num-samples)",
    )
    p.add_argument(
        "--kernel", choices=("auto", "fake"), default=None,  # qdit.search.fitness.SEARCH_KERNELS (tested)
        help="how candidates run: auto (default; on --resume what the search started with): the AMX "
        "integer kernel where it applies, as qdit quantize deploys on CPU; fake: fake quantization "
        "throughout (the reference)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--out", required=True, help="the recipe JSON to write")
    p.add_argument("--state", default=None, help="search state JSON (default <out>.state.json)")
    p.add_argument("--resume", action="store_true", help="continue the search saved in the state file")
    p.add_argument(
        "--json", default=None, help="write the search report (fitness, baseline, budget, history) here"
    )
    p.add_argument("--plot", default=None, help="write a PNG of fitness against images sampled here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check(args: argparse.Namespace) -> dict:
    """Validate every option before any heavy work; returns parsed values."""
    from qdit.errors import QditError
    from qdit.quant.rules import check_bits, weight_method
    from qdit.search.driver import METHODS
    from qdit.search.space import CandidateRule, parse_int_list

    if args.method not in METHODS:
        raise QditError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    for name in ("w_bits", "a_bits"):
        check_bits(getattr(args, name), f"--{name.replace('_', '-')}", QditError)
    for name in ("num_samples", "steps", "batch_size", "population", "top_k", "generations"):
        if getattr(args, name) < 1:
            raise QditError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_samples < 2:
        raise QditError("--num-samples must be >= 2 (a Fréchet distance needs a covariance)")
    from qdit.diffusion.sampler import check_cfg_scale

    check_cfg_scale(args.cfg, "--cfg")
    if args.fitness not in ("fd", "fd-fp"):
        raise QditError(f"--fitness must be fd or fd-fp, got {args.fitness!r}")
    if args.features not in ("auto", "domain", "inception", "clipnet"):
        raise QditError(f"--features must be auto, domain, inception or clipnet, got {args.features!r}")
    if args.budget_group is not None and args.budget_group <= 0:
        raise QditError(f"--budget-group must be > 0, got {args.budget_group}")
    if args.budget_bpw is not None and args.budget_bpw <= 0:
        raise QditError(f"--budget-bpw must be > 0, got {args.budget_bpw}")
    if not parse_act_granularity(args.act_granularity, "--act-granularity", QditError).dynamic:
        raise QditError(
            "the search evaluates dynamic activation quantizers; use --act-granularity "
            f"{', '.join(DYNAMIC_GRANULARITIES[:-1])} or {DYNAMIC_GRANULARITIES[-1]}"
        )
    if weight_method(args.weight_method, QditError, "--weight-method").needs_hessian:
        raise QditError(
            f"--weight-method {args.weight_method} needs calibration, which the search does not run; "
            f"use one of {', '.join(SEARCH_WEIGHT_METHODS)}"
        )
    for name in (
        "lofi_batch", "lofi_rounds", "lofi_samples", "shortlist", "heldout_samples", "exploit", "candidates",
        "cheap_budget",
    ):  # fmt: skip
        v = getattr(args, name)
        if v is not None and v < {"heldout_samples": 2, "exploit": 0, "cheap_budget": 2}.get(name, 1):
            raise QditError(f"--{name.replace('_', '-')} is too small: {v}")
    bayes_only = [
        f"--{name.replace('_', '-')}"
        for name in (
            "lofi_batch",
            "lofi_rounds",
            "lofi_samples",
            "lofi_measure",
            "acquisition",
            "shortlist",
            "exploit",
        )
        if getattr(args, name) is not None
    ] + (["--screen"] if args.screen else [])
    if bayes_only and args.strategy != "bayes":
        raise QditError(
            f"{bayes_only[0]} is an option of the cheap search's bayes strategy: add --strategy bayes"
        )
    if args.strategy == "bayes" and (args.candidates is not None or args.cheap_budget is not None):
        raise QditError("--candidates and --cheap-budget are options of the cheap search's gradient strategy")
    for name in ("crossovers", "mutations"):
        v = getattr(args, name)
        if v is not None and v < 0:
            raise QditError(f"--{name} must be >= 0, got {v}")
    if args.method != "full" and (args.crossovers is not None or args.mutations is not None):
        raise QditError("--crossovers and --mutations are options of the full search (--method full)")
    if args.cfg_channels is not None and args.cfg_channels < 1:
        raise QditError(f"--cfg-channels must be >= 1, got {args.cfg_channels}")
    layer_choices = None
    if args.layer_choices is not None:
        import json

        try:
            layer_choices = json.loads(Path(args.layer_choices).read_text())
        except OSError as exc:
            raise QditError(f"--layer-choices: cannot read {args.layer_choices}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise QditError(f"--layer-choices: {args.layer_choices} is not JSON ({exc.msg})") from None
        if not isinstance(layer_choices, dict) or not all(
            isinstance(v, list) and v and all(isinstance(g, int) and g >= 1 for g in v)
            for v in layer_choices.values()
        ):
            raise QditError(
                "--layer-choices must hold a JSON object of layer names to lists of positive group sizes"
            )
    out = {
        "layer_choices": layer_choices,
        "choices": None if args.choices in ("paper", "width") else parse_int_list(args.choices, "--choices"),
        "rule": CandidateRule() if args.choices == "width" else None,
        "bits_choices": parse_int_list(args.bits_choices, "--bits-choices") if args.bits_choices else (),
        "heldout": parse_int_list(args.heldout_seeds, "--heldout-seeds") if args.heldout_seeds else (),
    }
    for b in out["bits_choices"]:
        check_bits(b, "every --bits-choices value", QditError)
    if args.bits_choices and args.budget_bpw is None:
        raise QditError("mixed precision (--bits-choices) needs a --budget-bpw budget")
    from qdit.io.atomic import check_outputs
    from qdit.models.registry import model_input_path

    if Path(args.out).is_dir():
        raise QditError(f"--out {args.out} is a folder; give a file name such as recipe.json")
    state = args.state or f"{args.out}.state.json"
    check_outputs(
        {"--out": args.out, "--state": state, "--json": args.json, "--plot": args.plot},
        {"--model": model_input_path(args.model), "--ref": args.ref},
    )
    if args.resume and not Path(state).is_file():
        raise QditError(f"--resume: no search state at {state}; start without --resume (or give --state)")
    return out


def _features(args: argparse.Namespace, model: object, device: str) -> object:
    from qdit.diffusion.sampler import is_clip_shape
    from qdit.errors import QditError
    from qdit.eval.features import default_features, feature_space
    from qdit.search.fitness import model_geometry

    shape, _ = model_geometry(model)  # type: ignore[arg-type]
    kind = args.features
    video = is_clip_shape(shape)
    if kind == "auto":
        kind = default_features(tuple(shape))
    if video != (kind == "clipnet"):
        raise QditError(
            f"--features {kind} is for {'images' if video else 'clips'}, and {args.model} makes "
            f"{'clips' if video else 'images'} (clips: clipnet, the FVD of qdit's moving-garment clips)"
        )
    if args.inception_mode is not None and kind != "inception":
        raise QditError(f"--inception-mode is for --features inception; these are {kind} features")
    if kind == "clipnet":
        if tuple(shape) != (1, 8, 32, 32):
            raise QditError(f"clipnet features need clips of 8 grayscale 32x32 frames; this model makes {list(shape)}")
        if args.ref is None and args.fitness == "fd-fp":
            return feature_space("clipnet", None)
        return feature_space("clipnet", args.ref or "fashion-mnist-clips-test")
    if kind == "domain":
        if tuple(shape) != (1, 28, 28):
            raise QditError(
                f"domain features need a 28x28 grayscale model; this one makes {list(shape)} images"
            )
        return feature_space("domain", args.ref or "fashion-mnist-test")
    mode = args.inception_mode
    state = args.state or f"{args.out}.state.json"
    if mode is None and args.resume:  # a resumed search goes on in the mode it started with
        from qdit.diffusion.distributed import DistContext
        from qdit.eval.features import inception_mode_of
        from qdit.search.session import shared_saved_objective

        saved = shared_saved_objective(state, DistContext.current())  # the group init_distributed joined
        mode = inception_mode_of(str((saved or {}).get("features", "")))
    if args.ref is None and args.fitness == "fd-fp":
        return feature_space("inception", None, device=device, inception_mode=mode)
    if args.ref is None:
        raise QditError(
            "Inception FID needs a reference: give --ref (a reference .npz or fashion-mnist-test)"
        )
    return feature_space("inception", args.ref, device=device, inception_mode=mode)


def _num(v: float | None) -> str:
    return "inf" if v is None else f"{v:.4g}"


def run(args: argparse.Namespace) -> int:
    parsed = _check(args)
    import time

    import torch

    from qdit.api import load_model
    from qdit.commands.common import check_cfg_channels, resolve_device
    from qdit.diffusion.distributed import init_distributed
    from qdit.errors import QditError
    from qdit.io.atomic import write_json
    from qdit.search.cheap import CheapConfig
    from qdit.search.cost import Budget
    from qdit.search.driver import SearchConfig, heldout_fitness, search_groups
    from qdit.search.evolution import EvolutionConfig
    from qdit.search.fitness import FitnessConfig
    from qdit.search.plot import search_plot

    if args.threads is not None:
        if args.threads < 1:
            raise QditError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    budget = None
    if args.budget_group is not None:
        budget = Budget("mean_group", args.budget_group)
    elif args.budget_bpw is not None:
        budget = Budget("bpw", args.budget_bpw)
    evolution = EvolutionConfig(
        population=args.population, top_k=args.top_k, generations=args.generations, crossovers=args.crossovers,
        mutations=args.mutations,
    )  # fmt: skip
    cheap_fields = {
        k: v
        for k, v in (
            ("lofi_batch", args.lofi_batch),
            ("lofi_rounds", args.lofi_rounds),
            ("lofi_num_samples", args.lofi_samples),
            ("lofi_measure", args.lofi_measure),
            ("shortlist", args.shortlist),
            ("exploit", args.exploit),
            ("acquisition", args.acquisition),
            ("screen", args.screen or None),
            ("strategy", args.strategy),
            ("candidates", args.candidates),
            ("budget_evals", args.cheap_budget),
        )
        if v is not None
    }
    cheap = CheapConfig(**cheap_fields)
    fitness = FitnessConfig(
        steps=args.steps,
        cfg_scale=args.cfg,
        seed=args.seed,
        batch_size=args.batch_size,
        reference="fp" if args.fitness == "fd-fp" else "data",
        cfg_channels=args.cfg_channels,
        backward=args.sensitivity_backward,
        kernel=args.kernel,
    )
    config = SearchConfig(
        w_bits=args.w_bits, a_bits=args.a_bits, method=args.method, budget=budget, num_samples=args.num_samples,
        fitness=fitness, evolution=evolution, cheap=cheap, choices=parsed["choices"], rule=parsed["rule"],
        layer_choices=parsed["layer_choices"], separate_act=args.separate_act, bits_choices=parsed["bits_choices"],
        act_granularity=args.act_granularity, weight_method=args.weight_method, symmetric=args.symmetric,
        w_symmetric=args.symmetric or args.w_symmetric, a_symmetric=args.symmetric or args.a_symmetric,
        seed=args.seed,
    )  # fmt: skip
    dist = init_distributed(device)  # under torchrun: each rank on its own GPU when device is CUDA
    if dist.active:
        device = dist.device
    t0 = time.time()
    model = load_model(args.model, args.arch, device=device)
    if any(type(m).__name__ == "QuantLinear" for m in model.modules()):
        raise QditError(f"{args.model} is already quantized; search on the float model")
    from qdit.models.adapter import get_adapter
    from qdit.search.fitness import model_geometry

    shape, _ = model_geometry(model)  # the adapter's geometry: a one-line error for a model it cannot sample
    check_cfg_channels(args.cfg_channels, shape[0])
    get_adapter(model).check_cfg_scale(model, args.cfg)
    features = _features(args, model, device)
    state = args.state or f"{args.out}.state.json"
    outcome = search_groups(
        model, features, config,  # type: ignore[arg-type]
        state_path=state, resume=args.resume, dist=dist, progress=not args.no_progress and dist.is_main,
        model_name=args.model, device=device,
    )  # fmt: skip
    report = outcome.report
    res = outcome.result
    if parsed["heldout"] and dist.is_main:
        n = args.heldout_samples or args.num_samples
        genomes = {"best": res.best_genome, "baseline": res.baseline_genome}
        report["heldout"] = heldout_fitness(
            outcome.objective,
            genomes,
            parsed["heldout"],
            n,
            progress=not args.no_progress,
            also=["fp"] if outcome.objective.fp_model is not None and fitness.reference == "data" else [],
        )
        report["heldout_samples"] = n
    report["wall_seconds"] = time.time() - t0
    report["world_size"] = dist.world_size
    if dist.is_main:
        outcome.recipe.save(args.out)
        if args.json:
            write_json(args.json, report)
        if args.plot:
            search_plot(report, args.plot)
        b = report["budget"]
        best, base = report["best_fitness"], report["baseline_fitness"]
        how = f"{args.method} ({report['strategy']})" if "strategy" in report else args.method
        print(
            f"{how} search, W{args.w_bits}A{args.a_bits}, budget {b['description']}: "
            f"best {_num(best)} vs uniform g{report['baseline_group_size']} {_num(base)} "
            f"({report['evaluations']} evaluations, {report['images_sampled']} images, "
            f"{report['image_equivalents']:.0f} image-equivalents, search {report['seconds']:.0f} s, "
            f"all {report['wall_seconds']:.0f} s; "
            f"{b['kind']} {b['best']:.4g}) -> {args.out}"
        )
        if "heldout" in report:
            h = report["heldout"]
            print(
                f"held-out seeds {list(parsed['heldout'])}: best {_num(h['best']['mean'])} +- {_num(h['best']['std'])}, "
                f"uniform {_num(h['baseline']['mean'])} +- {_num(h['baseline']['std'])}"
            )
    return 0
