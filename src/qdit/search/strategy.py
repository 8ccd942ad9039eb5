"""What a search strategy is: an ask/tell object over genomes, and the one loop that drives any of them.

A strategy asks for a batch of measurements (:class:`Ask`: genomes, and what to measure of each:
the sample-based fitness or fidelity with ``n`` samples, the proxy, or the first-order
sensitivity), is told each genome's value, and asks again until it is :attr:`~Strategy.done`.
Measuring (caching, the state file, ranks) is the caller's: :func:`drive` hands every ask to a
``measure`` function. :class:`~qdit.search.evolution.EvolutionStrategy` is the full search's
evolution in this shape (the fitness its only measurement); the cheap search's strategies are in
:mod:`qdit.search.cheap`.

:class:`StepwiseStrategy` writes a strategy as the algorithm reads: a generator that yields an
:class:`Ask` and gets back the values of its genomes by key.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Protocol, Union

from qdit.search.objective import Sensitivity
from qdit.search.space import Genome, genome_key

KINDS = ("fit", "fidelity", "proxy", "sensitivity")
Value = Union[float, Sensitivity]  # noqa: UP007  (a runtime alias)


@dataclass(frozen=True)
class Ask:
    """A batch of measurements: ``kind`` of each genome (with ``n`` samples where the kind takes samples),
    logged under ``stage``."""

    stage: str
    kind: str
    genomes: tuple[Genome, ...]
    n: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown measurement {self.kind!r}; use one of {', '.join(KINDS)}")

    @property
    def distinct(self) -> list[Genome]:
        """The genomes asked for, each once, in order."""
        return list(dict.fromkeys(self.genomes))


class Strategy(Protocol):
    """Ask for measurements, tell their values; :attr:`done` when it has nothing more to ask."""

    @property
    def done(self) -> bool: ...

    def ask(self) -> Ask: ...

    def tell(self, genome: Genome, value: Value) -> None: ...


Steps = Generator[Ask, dict[str, Value], None]


class StepwiseStrategy:
    """A strategy written as a generator (:meth:`steps`): it yields an :class:`Ask` and receives the
    values of its genomes (by :func:`~qdit.search.space.genome_key`) once all of them are told."""

    def __init__(self) -> None:
        self._steps: Steps | None = None
        self._pending: Ask | None = None
        self._told: dict[str, Value] = {}
        self._done = False

    def steps(self) -> Steps:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        self._start()
        return self._done

    def ask(self) -> Ask:
        self._start()
        if self._pending is None:
            raise RuntimeError("the strategy is done: nothing to ask")
        return self._pending

    def tell(self, genome: Genome, value: Value) -> None:
        pending = self.ask()
        key = genome_key(genome)
        if key not in {genome_key(g) for g in pending.genomes}:
            raise ValueError(f"genome {key} was not asked for")
        self._told[key] = value
        if len(self._told) == len(pending.distinct):
            self._advance({genome_key(g): self._told[genome_key(g)] for g in pending.genomes})

    def _start(self) -> None:
        if self._steps is None:
            self._steps = self.steps()
            self._advance(None)

    def _advance(self, values: dict[str, Value] | None) -> None:
        assert self._steps is not None
        self._told = {}
        try:
            ask = self._steps.send(values) if values is not None else next(self._steps)
            while not ask.genomes:  # nothing to measure: answered at once
                ask = self._steps.send({})
        except StopIteration:
            self._pending, self._done = None, True
            return
        self._pending = ask


def drive(strategy: Strategy, measure: Callable[[Ask], Mapping[str, Value]]) -> None:
    """Run ``strategy`` to the end: every ask goes to ``measure`` (values by genome key), every value back
    to the strategy."""
    while not strategy.done:
        ask = strategy.ask()
        values = measure(ask)
        for g in ask.distinct:
            strategy.tell(g, values[genome_key(g)])
