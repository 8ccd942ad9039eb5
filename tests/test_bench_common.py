"""``benchmarks/bench_common.py``: what the benchmark scripts share."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_scripts import load_benchmark


def test_sample_once_samples_again_only_what_is_missing_or_made_otherwise(tmp_path: Path) -> None:
    common = load_benchmark("bench_common")
    npz = tmp_path / "s.npz"
    calls: list[int] = []

    def sample() -> None:
        calls.append(1)
        npz.write_bytes(b"samples")

    first = common.sample_once(npz, {"steps": 2}, sample)
    assert calls == [1] and first >= 0
    assert common.sample_once(npz, {"steps": 2}, sample) == first and calls == [1]  # stamped: not again
    common.sample_once(npz, {"steps": 3}, sample)  # other settings
    assert calls == [1, 1]
    npz.unlink()  # the stamp without its samples
    common.sample_once(npz, {"steps": 3}, sample)
    assert calls == [1, 1, 1]
    npz.write_bytes(b"rewritten by something else")  # not the samples the stamp was written for
    common.sample_once(npz, {"steps": 3}, sample)
    assert calls == [1, 1, 1, 1]


def test_a_failed_sampling_leaves_no_stamp_to_vouch_for_its_file(tmp_path: Path) -> None:
    common = load_benchmark("bench_common")
    npz = tmp_path / "s.npz"
    common.sample_once(npz, {"steps": 2}, lambda: npz.write_bytes(b"old samples"))

    def dies_after_writing() -> None:
        npz.write_bytes(b"new sample")  # replaced (same size would pass a size check), then a failure
        raise RuntimeError("cut short")

    with pytest.raises(RuntimeError):
        common.sample_once(npz, {"steps": 3}, dies_after_writing)
    calls: list[int] = []
    common.sample_once(npz, {"steps": 2}, lambda: calls.append(1) or npz.write_bytes(b"old samples"))
    assert calls == [1]  # the first settings' stamp is gone: sampled again


def test_best_times_interleaves_and_keeps_the_best() -> None:
    common = load_benchmark("bench_common")
    order: list[str] = []
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0, 30.0, 31.0])  # a 3 s, b 1 s; then a 2 s, b 1 s
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    best = common.best_times(fns, 2, lambda: next(clock))
    assert order == ["a", "b", "a", "b", "a", "b"]  # warm-up, then a and b in turn each round
    assert best == {"a": 2.0, "b": 1.0}
