"""What a search evaluates: the objective interface and a synthetic objective for tests.

An objective gives two measurements of a genome (lower is better):

* ``fitness(genome, num_samples, known)``: the real fitness from ``num_samples`` generated samples
  (FID / Fréchet distance). Sample ``i`` is always drawn with the same noise and label, so the
  features ``known`` of the first samples, computed earlier for the same genome, are reused and only
  the rest are generated;
* ``proxy(genome)``: a cheap stand-in (e.g. the noise-prediction error against the full-precision
  model on a few inputs), used by the cheap search to screen layers and rank candidates;
* ``fidelity(genome, num_samples, known)``: the distance of the samples to the full-precision
  model's samples drawn with the same noise (paired, so much less noisy with few samples than a
  distance to reference data); the cheap search's low-fidelity measurement. The same sample
  features serve ``fitness`` and ``fidelity``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from qdit.search.space import SearchSpace, genome_key

if TYPE_CHECKING:
    from qdit.search.gradient import Sensitivity


@dataclass
class Evaluation:
    """One measurement: its value, the images it generated and the model forwards it ran.

    ``forwards`` counts rows through the model (one row = one sample at one step, guidance
    included); ``features`` are the per-sample features behind a sample-based fitness.
    """

    value: float
    images: int = 0
    forwards: int = 0
    features: np.ndarray | None = field(default=None, repr=False)


@runtime_checkable
class Objective(Protocol):
    forwards_per_image: int

    def fitness(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Evaluation: ...

    def proxy(self, genome: Sequence[int]) -> Evaluation: ...

    def fidelity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Evaluation: ...

    def describe(self) -> dict: ...


@functools.lru_cache(maxsize=1 << 16)
def _unit_noise(*parts: object) -> float:
    """A deterministic standard-normal number from ``parts``."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return float(np.random.default_rng(int.from_bytes(h[:8], "little")).standard_normal())


class SyntheticObjective:
    """A toy objective with the shape of the real one, for tests and algorithm benchmarks.

    Every gene value has a hidden cost (finer groups are better, with a non-monotonic twist like the
    paper's); the fitness is their sum plus a per-sample noise whose mean over ``n`` samples shrinks
    like ``1 / sqrt(n)``, mostly shared by all genomes (paired noise) plus a genome-dependent part.
    The proxy is the hidden sum with a systematic per-gene error.
    """

    forwards_per_image = 20

    def __init__(
        self, space: SearchSpace, seed: int = 0, noise: float = 0.05, proxy_error: float = 0.2
    ) -> None:
        self.space = space
        self.seed = seed
        self.noise = noise
        self.proxy_error = proxy_error
        rng = np.random.default_rng(1234)
        self.table: list[dict[int, float]] = []
        self.proxy_table: list[dict[int, float]] = []
        for gene in space.genes:
            base = rng.uniform(0.2, 1.0)
            row = {c: base * np.log2(c) / 8 + rng.uniform(0, 0.15) for c in gene.choices}
            self.table.append(row)
            self.proxy_table.append(
                {c: v * (1 + proxy_error * rng.standard_normal()) for c, v in row.items()}
            )
        self.calls: list[tuple[str, str, int]] = []

    def true_value(self, genome: Sequence[int]) -> float:
        return float(sum(t[v] for t, v in zip(self.table, genome)))

    def _sample_noise(self, genome: Sequence[int], i: int) -> float:
        """Sample ``i``'s noise: a part shared by every genome and a part that adds up over the genes
        (paired noise: genomes that differ in a few genes have nearly the same samples)."""
        own = sum(_unit_noise(self.seed, i, k, v) for k, v in enumerate(genome)) / np.sqrt(len(genome))
        return _unit_noise(self.seed, i) + 0.3 * own

    def fitness(self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None) -> Evaluation:
        have = 0 if known is None else len(known)
        new = np.array([[self._sample_noise(genome, i)] for i in range(have, num_samples)]).reshape(-1, 1)
        feats = new if known is None else np.concatenate([known[:num_samples], new])
        self.calls.append(("fitness", genome_key(genome), num_samples))
        value = self.true_value(genome) + self.noise * float(feats[:num_samples, 0].mean())
        n_new = max(0, num_samples - have)
        return Evaluation(
            value, images=n_new, forwards=n_new * self.forwards_per_image, features=feats[:num_samples]
        )

    def fidelity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Evaluation:
        """The hidden cost with less noise and a small systematic difference from the fitness."""
        ev = self.fitness(genome, num_samples, known)
        self.calls[-1] = ("fidelity", genome_key(genome), num_samples)
        shared = self.noise * float(np.mean([_unit_noise(self.seed, i) for i in range(num_samples)]))
        bias = 0.05 * sum(_unit_noise("bias", k, v) for k, v in enumerate(genome)) / np.sqrt(len(genome))
        ev.value = ev.value - shared + bias
        return ev

    has_sensitivity = True

    def sensitivity_forwards(self, num_samples: int) -> int:
        return num_samples * self.forwards_per_image * 6

    def sensitivity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Sensitivity:
        """The exact single-gene changes of the hidden cost, with a small deterministic error."""
        from qdit.search.gradient import Sensitivity

        self.calls.append(("sensitivity", genome_key(genome), num_samples))
        table = tuple(
            {
                c: 0.0
                if c == v
                else t[c]
                - t[v]
                + self.proxy_error * 0.1 * _unit_noise("sens", self.seed, genome_key(genome), k, c)
                for c in t
            }
            for k, (t, v) in enumerate(zip(self.table, genome))
        )
        value = self.true_value(genome)
        return Sensitivity(
            table, Evaluation(value, images=num_samples, forwards=self.sensitivity_forwards(num_samples))
        )

    def proxy(self, genome: Sequence[int]) -> Evaluation:
        self.calls.append(("proxy", genome_key(genome), 0))
        return Evaluation(float(sum(t[v] for t, v in zip(self.proxy_table, genome))), forwards=8)

    def describe(self) -> dict:
        return {
            "objective": "synthetic",
            "seed": self.seed,
            "noise": self.noise,
            "proxy_error": self.proxy_error,
        }
