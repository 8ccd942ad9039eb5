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
  features serve ``fitness`` and ``fidelity``;
* ``sensitivity(genome, num_samples, known)`` (where ``has_sensitivity``): every single-gene change's
  predicted effect on the fitness (:mod:`qdit.search.gradient`), costing ``sensitivity_forwards``.

An objective that keeps state worth saving with a search (:class:`StatefulObjective`: what preparing
it cost, and the float model's sample features) has it saved in the search's state file.
"""

from __future__ import annotations

import math
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


SensitivityTable = tuple[dict[int, float], ...]  # per gene: choice -> predicted fitness change


@dataclass
class Sensitivity:
    """Predicted single-gene fitness changes at a genome and what computing them cost."""

    table: SensitivityTable
    cost: Evaluation

    def predict(self, base_value: float, genome: Sequence[int]) -> float:
        """The first-order (additive) prediction of ``genome`` from the linearisation point."""
        return base_value + float(sum(row[int(v)] for row, v in zip(self.table, genome)))

    def to_list(self) -> list[list[list[float]]]:
        return [[[float(c), float(d)] for c, d in sorted(row.items())] for row in self.table]

    @staticmethod
    def table_from_list(rows: list) -> SensitivityTable:
        return tuple({int(c): float(d) for c, d in row} for row in rows)

    @classmethod
    def from_list(cls, rows: list) -> Sensitivity:
        """A table saved with :meth:`to_list` (its cost was counted when it was computed)."""
        return cls(cls.table_from_list(rows), Evaluation(math.nan))


@runtime_checkable
class Objective(Protocol):
    """What the searches measure a genome with (lower is better)."""

    forwards_per_image: int  # model rows per generated image (steps, times two under guidance)

    def fitness(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Evaluation: ...

    def proxy(self, genome: Sequence[int]) -> Evaluation: ...

    def fidelity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Evaluation: ...

    @property
    def has_sensitivity(self) -> bool: ...

    def sensitivity_forwards(self, num_samples: int) -> int: ...

    def sensitivity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Sensitivity: ...

    def describe(self) -> dict: ...


@runtime_checkable
class StatefulObjective(Objective, Protocol):
    """An objective with state that a search saves beside its own: what preparing the objective cost
    (recorded once, as the search's first entry) and reference features (e.g. the float model's
    samples), so a resumed search draws nothing again."""

    setup_cost: Evaluation | None

    def reference_cache(self) -> dict[str, np.ndarray]: ...

    def restore_reference_cache(self, cache: dict[str, np.ndarray]) -> None: ...
