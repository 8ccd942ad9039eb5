"""An additive surrogate of the fitness, learned from measurements and the screened proxy.

``f(g) ~ a + b * proxy(g) + sum_i w_i[g_i]``: a scaled version of the additive proxy prediction
plus one learned correction per (gene, choice), ridge-regularised towards zero (so with few
measurements the surrogate follows the proxy, with many it follows the measurements). The gene
value of the reference genome (the uniform baseline) has no correction of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from qdit.search.space import Genome, SearchSpace


class AdditiveSurrogate:
    def __init__(
        self, space: SearchSpace, reference: Genome, prior: Callable[[Genome], float], ridge: float = 1.0
    ) -> None:
        self.space = space
        self.reference = tuple(reference)
        self.prior = prior
        self.ridge = ridge
        self.columns: list[tuple[int, int]] = [
            (i, c) for i, gene in enumerate(space.genes) for c in gene.choices if c != self.reference[i]
        ]
        self.index = {col: k for k, col in enumerate(self.columns)}
        self.coef = np.zeros(len(self.columns) + 2)
        self.coef[1] = 1.0
        self.y_mean, self.y_std, self.p_mean, self.p_std = 0.0, 1.0, 0.0, 1.0

    def _design(self, genomes: Sequence[Genome]) -> np.ndarray:
        x = np.zeros((len(genomes), len(self.columns) + 2))
        x[:, 0] = 1.0
        for r, g in enumerate(genomes):
            x[r, 1] = (self.prior(g) - self.p_mean) / self.p_std
            for i, v in enumerate(g):
                k = self.index.get((i, int(v)))
                if k is not None:
                    x[r, 2 + k] = 1.0
        return x

    def fit(self, genomes: Sequence[Genome], values: Sequence[float]) -> AdditiveSurrogate:
        y = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(y)
        genomes = [g for g, k in zip(genomes, ok) if k]
        y = y[ok]
        if len(y) == 0:
            return self
        p = np.array([self.prior(g) for g in genomes])
        self.p_mean, self.p_std = float(p.mean()), float(p.std()) or 1.0
        self.y_mean, self.y_std = float(y.mean()), float(y.std()) or 1.0
        x = self._design(genomes)
        t = (y - self.y_mean) / self.y_std
        penalty = np.full(x.shape[1], self.ridge)
        penalty[:2] = 1e-6  # intercept and the proxy's slope are (almost) free
        lhs = x.T @ x + np.diag(penalty)
        self.coef = np.linalg.solve(lhs, x.T @ t)
        return self

    def predict(self, genomes: Sequence[Genome]) -> np.ndarray:
        return self.y_mean + self.y_std * (self._design(genomes) @ self.coef)

    def __call__(self, genome: Genome) -> float:
        return float(self.predict([genome])[0])
