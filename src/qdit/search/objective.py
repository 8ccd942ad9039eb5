"""What a search evaluates: the objective interface (the tests' synthetic objective is in
``tests/search_doubles.py``).

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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


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
