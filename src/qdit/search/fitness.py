"""The fitness of a candidate on a real model: :class:`ModelObjective` (the sample-based fitness, the
noise-prediction proxy and its data, the first-order sensitivity) and its :class:`FitnessConfig`. The
feature spaces it scores samples in are :mod:`qdit.eval.features`; the search space is
:mod:`qdit.search.space`, and the layers searched and the export of a genome as a recipe are
:mod:`qdit.search.recipes`.

The model is quantized once, with every candidate group size (and bit-width) precomputed per layer
(:mod:`qdit.search.bank`), so switching to a candidate is a few pointer swaps and a candidate costs
only its sampling. Every candidate is sampled with the same noise and labels (sample ``i`` of seed
``s`` always has the same noise, see :mod:`qdit.diffusion.sampler`).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from qdit.calib.quantize import quantize_layers, resolve_specs
from qdit.diffusion.sampler import (
    SamplerConfig,
    default_labels,
    generate,
    is_clip_shape,
    iter_samples,
    to_uint8_nhwc,
)
from qdit.diffusion.schedule import GaussianDiffusion
from qdit.errors import QditError
from qdit.eval.features import FeatureSpace
from qdit.models.adapter import get_adapter
from qdit.nn.swap import fuse, quant_layers, unfuse
from qdit.recipe import QuantSpec
from qdit.search.bank import BankedQuantLinear, bank_factory
from qdit.search.objective import Evaluation, Sensitivity
from qdit.search.recipes import genome_recipe
from qdit.search.space import (
    Genome,
    SearchSpace,
)

REFERENCES = ("data", "fp")
BACKWARDS = ("auto", "graph", "steps")
SEARCH_KERNELS = ("auto", "fake")


@dataclass
class FitnessConfig:
    """Sampling for the fitness and the proxy. ``proxy_samples`` full-precision trajectories give the
    proxy's inputs; ``proxy_steps`` of their model calls (evenly spread) are kept.

    ``reference``: the fitness is the Fréchet distance of the samples' features to the reference
    data set (``"data"``, the paper's FID), or to the features of the full-precision model's samples
    drawn with the same noise and labels (``"fp"``: how far quantization moved the distribution;
    paired, so far less noisy with few samples)."""

    steps: int = 20
    cfg_scale: float = 1.5
    method: str = "ddim"
    seed: int = 0
    batch_size: int = 64
    proxy_samples: int = 4
    proxy_steps: int = 10
    proxy_seed: int = 10_000
    reference: str = "data"  # "data": against the reference set; "fp": against the float model's samples
    cfg_channels: int | None = None  # guided channels (None: all; 3: official DiT's forward_with_cfg)
    # the sensitivity pass's backward through the sampler: "graph" (one graph over all steps: fastest),
    # "steps" (one step's graph at a time: an extra forward, memory of one step), "auto" (steps for clips)
    backward: str = "auto"
    # how candidates run: "auto" the AMX integer kernel where it applies (what qdit quantize deploys on
    # CPU; BENCHMARKS.md has its speed), else fake quantization; "fake" fake quantization throughout (the
    # reference, and how searches ran before this setting). None: "auto", or on resume what the saved
    # search ran with (qdit.search.driver)
    kernel: str | None = None

    def __post_init__(self) -> None:
        SamplerConfig(self.steps, self.method, self.cfg_scale, cfg_channels=self.cfg_channels)  # validates
        if self.reference not in REFERENCES:
            raise QditError(
                f"the fitness reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}"
            )
        if self.backward not in BACKWARDS:
            raise QditError(f"the sensitivity backward must be one of {', '.join(BACKWARDS)}, got {self.backward!r}")
        if self.batch_size < 1 or self.proxy_samples < 1 or self.proxy_steps < 1:
            raise QditError("batch size, proxy samples and proxy steps must be >= 1")
        if self.kernel is not None and self.kernel not in SEARCH_KERNELS:
            raise QditError(f"the search's kernel must be one of {', '.join(SEARCH_KERNELS)}, got {self.kernel!r}")

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(
            steps=self.steps, method=self.method, cfg_scale=self.cfg_scale, cfg_channels=self.cfg_channels
        )

    @property
    def resolved_kernel(self) -> str:
        """The kernel the candidates run on (None: ``auto``)."""
        return self.kernel or "auto"

    @property
    def forwards_per_image(self) -> int:
        return self.steps * (2 if self.cfg_scale != 1.0 else 1)


def model_geometry(model: nn.Module) -> tuple[tuple[int, ...], int]:
    """``(image_shape, num_classes)`` of a class-conditional model, from its adapter (the one definition
    shared with the sampler and calibration; a one-line error when the adapter does not know)."""
    shape, classes = get_adapter(model).sampling_geometry(model)
    return tuple(int(v) for v in shape), int(classes)


def _schedule(model: nn.Module) -> GaussianDiffusion:
    """The model's training noise schedule (its adapter's; qdit's linear 1000 steps by default)."""
    config = get_adapter(model).noise_schedule(model)
    return GaussianDiffusion.from_scheduler_config(config) if config else GaussianDiffusion.linear()


def weights_digest(model: nn.Module, names: Sequence[str], per_layer: int = 4096) -> str:
    """A short hash of the searched layers' float weights (a sample of each), to tell models apart."""
    h = hashlib.sha256()
    modules = dict(model.named_modules())
    for name in names:
        w = modules[name].weight.detach().float().cpu().reshape(-1)
        step = max(1, w.numel() // per_layer)
        h.update(name.encode())
        h.update(str(tuple(modules[name].weight.shape)).encode())
        h.update(w[::step][:per_layer].numpy().tobytes())
    return h.hexdigest()[:16]


class _Recorder:
    """A model function that records its inputs (for the proxy's calibration batch)."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.model = model
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), t.detach().clone(), y.detach().clone()))
        return self.model(x, t, y)


@dataclass
class _ProxyData:
    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    eps: torch.Tensor  # full-precision noise prediction
    scale: float = field(default=1.0)


class ModelObjective:
    """Fitness and proxy of genomes on a quantized model with a bank of group sizes per layer.

    Build it with :meth:`build` from a float model (which is copied, not changed).
    """

    def __init__(
        self,
        qmodel: nn.Module,
        space: SearchSpace,
        features: FeatureSpace,
        config: FitnessConfig,
        proxy_data: _ProxyData | None,
        model_name: str = "model",
        device: torch.device | str = "cpu",
        fp_model: nn.Module | None = None,
    ) -> None:
        if config.reference == "fp" and fp_model is None:
            raise QditError("a fitness against the float model's samples needs the float model")
        self.fp_model = fp_model
        self._fp_features: dict[int, np.ndarray] = {}
        self.model = qmodel
        self.space = space
        self.features = features
        self.config = config
        self.proxy_data = proxy_data
        self.model_name = model_name
        self.device = torch.device(device)
        adapter = get_adapter(qmodel)
        self.image_shape, self.num_classes = model_geometry(qmodel)
        adapter.check_cfg_scale(qmodel, config.cfg_scale)
        # how the sampler calls the models (their adapter's model function) and their noise schedule
        self.model_fn = adapter.model_fn(qmodel)
        self.fp_fn = get_adapter(fp_model).model_fn(fp_model) if fp_model is not None else None
        self.diffusion = _schedule(qmodel)
        self.layers = quant_layers(qmodel)
        missing = [layer.name for layer in space.layers if layer.name not in self.layers]
        if missing:
            raise QditError(f"layer {missing[0]} of the search space is not quantized in the model")
        self.forwards_per_image = config.forwards_per_image
        # clips hold frames x tokens activations per sample: a graph over all steps does not fit in memory
        self.stepwise_backward = config.backward == "steps" or (
            config.backward == "auto" and is_clip_shape(self.image_shape)
        )
        self.weights_digest = ""
        self.quant_settings: dict = {}  # the base quantizer's non-default settings (for the fingerprint)
        self._active: Genome | None = None
        # what preparing the proxy cost: its full-precision trajectories and reference forward
        self.setup_cost: Evaluation | None = None
        if proxy_data is not None:
            self.setup_cost = Evaluation(
                0.0,
                images=config.proxy_samples,
                forwards=config.proxy_samples * config.forwards_per_image + len(proxy_data.x),
            )

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: nn.Module,
        space: SearchSpace,
        base: QuantSpec,
        features: FeatureSpace,
        config: FitnessConfig | None = None,
        model_name: str = "model",
        device: torch.device | str = "cpu",
        with_proxy: bool = True,
        progress: bool = False,
        keep_float: bool = True,
    ) -> ModelObjective:
        """Copy ``model``, record the proxy's inputs with the float copy, quantize it with a bank of
        every candidate group size (and bits) per layer, and return the objective."""
        config = config or FitnessConfig()
        model = copy.deepcopy(model).to(device).eval()
        digest = weights_digest(model, [layer.name for layer in space.layers])
        # the float copy: the proxy's reference, a fitness against its samples, or held-out FD to float
        fp_model = copy.deepcopy(model) if config.reference == "fp" or with_proxy or keep_float else None
        proxy = cls._proxy_inputs(model, config, device) if with_proxy else None
        banks: dict[str, set[int]] = {}
        for g in space.genes:
            if g.kind != "w_bits":
                banks.setdefault(g.layer, set()).update(g.choices)
        bits = sorted({b for g in space.genes if g.kind == "w_bits" for b in g.choices} | {space.w_bits})
        # every searched layer starts at its finest choice; the rest of the default set keeps ``base``
        recipe = genome_recipe(
            space, tuple(g.choices[0] if g.kind != "w_bits" else space.w_bits for g in space.genes), base
        )
        factory = bank_factory({k: sorted(v) for k, v in banks.items()}, bits if len(bits) > 1 else ())
        # the banked layers are never frozen to a kernel (qdit.quantize's freeze): they switch themselves
        quantize_layers(model, resolve_specs(model, recipe), layer_factory=factory, progress=progress)
        integer = config.resolved_kernel != "fake"
        for layer in quant_layers(model).values():
            if isinstance(layer, BankedQuantLinear):
                layer.precompute()
                layer.run_integer(integer)
        if integer:  # as a deployed model: the kernel applies the activation after the product
            fuse(model, get_adapter(model).activation_pairs(model))
        for p in model.parameters():  # the search never trains; the sensitivity pass needs no weight grads
            p.requires_grad_(False)
        obj = cls(model, space, features, config, proxy, model_name, device, fp_model=fp_model)
        obj.weights_digest = digest
        defaults = QuantSpec(w_bits=base.w_bits, a_bits=base.a_bits)
        obj.quant_settings = {
            k: getattr(base, k)
            for k in ("w_symmetric", "a_symmetric", "weight_method", "act_granularity")
            if getattr(base, k) != getattr(defaults, k)
        }
        return obj

    @staticmethod
    def _proxy_inputs(model: nn.Module, config: FitnessConfig, device: torch.device | str) -> _ProxyData:
        adapter = get_adapter(model)
        shape, num_classes = model_geometry(model)
        adapter.check_cfg_scale(model, config.cfg_scale)
        model_fn = adapter.model_fn(model)
        rec = _Recorder(model_fn)
        labels = default_labels(config.proxy_samples, num_classes)
        generate(
            rec,
            shape,
            num_classes,
            labels,
            config.proxy_seed,
            config.sampler,
            batch_size=config.batch_size,
            device=device,
            diffusion=_schedule(model),
        )
        keep = np.unique(
            np.linspace(0, len(rec.calls) - 1, min(config.proxy_steps, len(rec.calls))).round().astype(int)
        )
        x = torch.cat([rec.calls[i][0] for i in keep])
        t = torch.cat([rec.calls[i][1] for i in keep])
        y = torch.cat([rec.calls[i][2] for i in keep])
        eps = model_fn(x, t, y)[:, : shape[0]].float()
        return _ProxyData(x, t, y, eps, float(eps.pow(2).mean().clamp(min=1e-12)))

    # --- switching candidates ------------------------------------------------------------------
    def apply(self, genome: Sequence[int]) -> None:
        genome = tuple(int(v) for v in genome)
        if genome == self._active:
            return
        for name, s in self.space.settings(genome).items():
            self.layers[name].configure(w_group=s.w_group, a_group=s.a_group, w_bits=s.w_bits)
        self._active = genome

    # --- measurements --------------------------------------------------------------------------
    @torch.no_grad()
    def samples(self, genome: Sequence[int], start: int, stop: int, seed: int | None = None) -> np.ndarray:
        """uint8 NHWC samples ``start..stop-1`` of ``genome``."""
        self.apply(genome)
        labels = default_labels(stop, self.num_classes)[start:stop]
        x = generate(
            self.model_fn, self.image_shape, self.num_classes, labels, self.config.seed if seed is None else seed,
            self.config.sampler, indices=list(range(start, stop)), batch_size=self.config.batch_size, device=self.device,
            diffusion=self.diffusion,
        )  # fmt: skip
        return to_uint8_nhwc(x)

    def fitness(self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None) -> Evaluation:
        return self.fitness_at(genome, num_samples, known, None)

    def fitness_at(
        self,
        genome: Sequence[int],
        num_samples: int,
        known: np.ndarray | None,
        seed: int | None,
        reference: str | None = None,
    ) -> Evaluation:
        """The fitness with sample seed ``seed`` (default: the search's) against ``reference``
        (default: the configured one)."""
        have = 0 if known is None else min(len(known), num_samples)
        parts = [] if known is None else [np.asarray(known[:have])]
        if have < num_samples:
            parts.append(
                np.asarray(
                    self.features.extract(self.samples(genome, have, num_samples, seed)), dtype=np.float32
                )
            )
        feats = np.concatenate(parts)
        new = num_samples - have
        if (reference or self.config.reference) == "fp":
            ref, extra = self.reference_features(num_samples, seed)
            new += extra
            from qdit.eval.metrics import feature_stats, frechet_distance

            value = float(frechet_distance(*feature_stats(feats), *feature_stats(ref)))
        else:
            value = self.features.distance(feats)
        return Evaluation(value, images=new, forwards=new * self.forwards_per_image, features=feats)

    def fidelity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Evaluation:
        """The Fréchet distance to the float model's samples drawn with the same noise and labels."""
        return self.fitness_at(genome, num_samples, known, None, "fp")

    @torch.no_grad()
    def reference_features(self, num_samples: int, seed: int | None = None) -> tuple[np.ndarray, int]:
        """Features of the float model's samples ``0..num_samples-1`` (cached per seed) and how many
        images had to be generated now."""
        if self.fp_model is None:
            raise QditError(
                "distances to the float model's samples need an objective built with reference='fp'"
            )
        seed = self.config.seed if seed is None else seed
        have = self._fp_features.get(seed, np.zeros((0, 0), dtype=np.float32))
        extra = max(0, num_samples - len(have))
        if extra:
            labels = default_labels(num_samples, self.num_classes)[len(have) :]
            x = generate(
                self.fp_fn, self.image_shape, self.num_classes, labels, seed, self.config.sampler,
                indices=list(range(len(have), num_samples)), batch_size=self.config.batch_size, device=self.device,
                diffusion=self.diffusion,
            )  # fmt: skip
            new = np.asarray(self.features.extract(to_uint8_nhwc(x)), dtype=np.float32)
            have = new if len(have) == 0 else np.concatenate([have, new])
            self._fp_features[seed] = have
        return have[:num_samples], extra

    def reference_cache(self) -> dict[str, np.ndarray]:
        """The float model's sample features drawn so far, by sample seed (saved with a search's state)."""
        return {str(seed): feats for seed, feats in self._fp_features.items()}

    def restore_reference_cache(self, cache: dict[str, np.ndarray]) -> None:
        for seed, feats in cache.items():
            if len(feats) > len(self._fp_features.get(int(seed), ())):
                self._fp_features[int(seed)] = np.asarray(feats, dtype=np.float32)

    # --- first-order sensitivity ----------------------------------------------------------------
    @property
    def has_sensitivity(self) -> bool:
        return self.features.differentiable is not None

    def _alternatives(self, genome: Genome) -> dict[str, list[tuple[int, int, dict[str, int]]]]:
        """Per layer: ``(gene, choice, settings)`` for every single-gene change of ``genome``."""
        out: dict[str, list[tuple[int, int, dict[str, int]]]] = {}
        for i, gene in enumerate(self.space.genes):
            for c in gene.choices:
                if c == genome[i]:
                    continue
                changed = genome[:i] + (int(c),) + genome[i + 1 :]
                s = self.space.settings(changed)[gene.layer]
                out.setdefault(gene.layer, []).append(
                    (i, int(c), {"w_group": s.w_group, "a_group": s.a_group, "w_bits": s.w_bits})
                )
        return out

    @contextmanager
    def _fake_quantization(self) -> Iterator[None]:
        """The model as ``--kernel fake`` has it (fake quantization, activations not fused), meanwhile:
        the sensitivity linearises each layer around its own output and needs gradients, so it is the
        same on either kernel. The integer layouts are kept for afterwards."""
        if self.config.resolved_kernel == "fake":
            yield
            return
        banks = [layer for layer in self.layers.values() if isinstance(layer, BankedQuantLinear)]
        unfuse(self.model)
        for layer in banks:
            layer.run_integer(False)
        try:
            yield
        finally:
            for layer in banks:
                layer.run_integer(True)
            fuse(self.model, get_adapter(self.model).activation_pairs(self.model))

    def sensitivity_forwards(self, num_samples: int) -> int:
        """What :meth:`sensitivity` costs, in model rows: the forward, about two forwards' worth of
        backward, and one forward per alternative of the layer with the most (an upper bound: only
        the linears are rerun); with a step-by-step backward one more forward (the steps run first
        without a graph)."""
        per_layer: dict[str, int] = {}
        for gene in self.space.genes:
            per_layer[gene.layer] = per_layer.get(gene.layer, 0) + len(gene.choices) - 1
        alts = max(per_layer.values(), default=0)
        return num_samples * self.forwards_per_image * ((4 if self.stepwise_backward else 3) + alts)

    def sensitivity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Sensitivity:
        """Every single-gene change's first-order effect on the fitness of ``num_samples`` samples
        (see :mod:`qdit.search.gradient`): one forward and backward pass through the sampler."""
        from qdit.eval.metrics import feature_stats
        from qdit.search.gradient import OutputProbe, distance_gradient

        if self.features.differentiable is None:
            raise QditError(
                f"the {self.features.name} features cannot be differentiated: use the cheap search's 'bayes' strategy"
            )
        genome = self.space.validate(genome)
        images, forwards = num_samples, self.sensitivity_forwards(num_samples)
        if known is None or len(known) < num_samples:  # the features of the genome's own samples
            ev = self.fitness(genome, num_samples, known)
            known, images, forwards = ev.features, images + ev.images, forwards + ev.forwards
        assert known is not None
        if self.config.reference == "fp":
            ref, extra = self.reference_features(num_samples)
            mu_ref, sigma_ref = feature_stats(ref)
            images, forwards = images + extra, forwards + extra * self.forwards_per_image
        else:
            if self.features.mu is None or self.features.sigma is None:
                raise QditError(f"{self.features.name}: no reference statistics (give a reference data set)")
            mu_ref, sigma_ref = self.features.mu, self.features.sigma
        value, grad_features = distance_gradient(np.asarray(known[:num_samples]), mu_ref, sigma_ref)
        self.apply(genome)
        alternatives = self._alternatives(genome)
        settings = self.space.settings(genome)

        def alt_fn(name: str) -> Callable[[torch.Tensor], list[tuple[int, int, torch.Tensor]]]:
            layer = self.layers[name]
            own = settings[name]

            def run(x: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
                outs = []
                for gene, choice, s in alternatives[name]:
                    layer.configure(**s)
                    outs.append((gene, choice, layer(x)))
                layer.configure(w_group=own.w_group, a_group=own.a_group, w_bits=own.w_bits)
                return outs

            return run

        def backprop_features(idx: list[int], x0: torch.Tensor) -> None:
            """dF/dfeatures of the batch's samples back through the feature network (and ``x0``'s graph)."""
            with torch.enable_grad():
                feats = self.features.differentiable(x0)
                g = torch.from_numpy(grad_features[idx]).to(feats.device, feats.dtype)
                (feats * g).sum().backward()

        def backward(idx: list[int], x0: torch.Tensor) -> torch.Tensor:
            """dF/dx0 of the batch (the sampler then goes back step by step)."""
            x0 = x0.detach().requires_grad_(True)
            backprop_features(idx, x0)
            assert x0.grad is not None
            return x0.grad

        def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # the graph starts at the noise (no weight needs a gradient)
            return self.model_fn(x if x.requires_grad else x.detach().requires_grad_(True), t, y)

        labels = default_labels(num_samples, self.num_classes)
        chunk = max(1, min(self.config.batch_size, 16))
        stepwise = self.stepwise_backward
        with self._fake_quantization(), OutputProbe(self.layers, {n: alt_fn(n) for n in alternatives}) as probe:
            for idx, x0 in iter_samples(
                self.model_fn if stepwise else fn, self.image_shape, self.num_classes, labels, self.config.seed,
                self.config.sampler, batch_size=chunk, device=self.device, diffusion=self.diffusion,
                grad=not stepwise, backward=backward if stepwise else None,
            ):  # fmt: skip
                if not stepwise:
                    backprop_features(idx, x0)
        table = tuple(
            {
                int(c): (0.0 if c == genome[i] else probe.deltas.get(i, {}).get(int(c), 0.0))
                for c in gene.choices
            }
            for i, gene in enumerate(self.space.genes)
        )
        cost = Evaluation(value, images=images, forwards=forwards)
        return Sensitivity(table, cost)

    @torch.no_grad()
    def proxy(self, genome: Sequence[int]) -> Evaluation:
        """Relative mean squared error of the noise prediction against the float model."""
        if self.proxy_data is None:
            raise QditError("this objective was built without proxy inputs")
        self.apply(genome)
        d = self.proxy_data
        c = self.image_shape[0]
        err = 0.0
        bs = max(1, self.config.batch_size * 2)
        for s in range(0, len(d.x), bs):
            out = self.model_fn(d.x[s : s + bs], d.t[s : s + bs], d.y[s : s + bs])[:, :c].float()
            err += float((out - d.eps[s : s + bs]).pow(2).sum())
        value = err / d.eps.numel() / d.scale
        return Evaluation(value, images=0, forwards=len(d.x))

    def describe(self) -> dict:
        c = self.config
        return {
            "model": self.model_name,
            "weights": self.weights_digest,
            "features": self.features.name,
            "reference": c.reference,
            "steps": c.steps,
            "cfg_scale": c.cfg_scale,
            "sampler": c.method,
            "fitness_seed": c.seed,
            "proxy_samples": c.proxy_samples,
            "proxy_steps": c.proxy_steps,
            "proxy_seed": c.proxy_seed,
            # settings added later: only when they differ from the defaults, so that the fingerprints
            # of states written before them still match
            **({"cfg_channels": c.cfg_channels} if c.cfg_channels is not None else {}),
            **({"kernel": c.resolved_kernel} if c.resolved_kernel != "fake" else {}),
            **self.quant_settings,
        }
