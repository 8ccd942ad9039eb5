"""The ask/tell protocol of :mod:`qdit.search.strategy` and the loop that drives any strategy."""

from __future__ import annotations

import pytest

from qdit.search.space import genome_key
from qdit.search.strategy import Ask, StepwiseStrategy, drive


class Halving(StepwiseStrategy):
    """Measures two genomes (one asked twice), skips an empty round, then keeps the better one at more samples."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def steps(self):
        got = yield Ask("round 0", "fit", ((1, 2), (3, 4), (1, 2)), 4)
        self.seen.append(got)
        self.seen.append((yield Ask("nothing", "fit", (), 4)))
        best = min(got, key=got.get)
        self.seen.append((yield Ask("rung", "fit", (tuple(int(v) for v in best.split(",")),), 8)))


def test_drive_runs_a_stepwise_strategy_to_the_end():
    asks = []

    def measure(ask: Ask) -> dict:
        asks.append(ask)
        return {genome_key(g): float(sum(g) * ask.n) for g in ask.distinct}

    s = Halving()
    drive(s, measure)
    assert s.done
    assert [a.stage for a in asks] == ["round 0", "rung"]  # an empty ask is answered without measuring
    assert asks[0].distinct == [(1, 2), (3, 4)]
    assert s.seen == [{"1,2": 12.0, "3,4": 28.0}, {}, {"1,2": 24.0}]


def test_tell_checks_what_was_asked():
    s = Halving()
    assert not s.done and s.ask().stage == "round 0"
    with pytest.raises(ValueError, match="not asked"):
        s.tell((9, 9), 1.0)
    s.tell((1, 2), 1.0)
    assert s.ask().stage == "round 0"  # still waiting for (3, 4)
    s.tell((3, 4), 2.0)
    assert s.ask().stage == "rung"
    with pytest.raises(ValueError, match="unknown measurement"):
        Ask("x", "fid", ((1,),))
