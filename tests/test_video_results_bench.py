"""``benchmarks/video_results.py`` resumes: a rerun reuses what was made with the same settings and
redoes only what changed. The qdit commands are replaced by a recorder that writes the files they would
write (the real commands are covered by the CLI tests); what is checked is which commands run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench_scripts import load_benchmark


def load_script():  # type: ignore[no-untyped-def]
    return load_benchmark("video_results")


def fake_qdit(calls: list[tuple[str, ...]]):  # type: ignore[no-untyped-def]
    def run(*args: str) -> None:
        calls.append(args)
        out = Path(args[args.index("--out") + 1]) if "--out" in args else None
        if args[0] == "quantize":
            assert out is not None
            out.mkdir(parents=True, exist_ok=True)
            (out / "qdit.json").write_text("{}")
        elif args[0] == "sample":
            assert out is not None
            seed = int(args[args.index("--seed") + 1])
            np.savez(out, arr_0=np.full((4, 2, 28, 28, 1), seed, np.uint8))
        elif args[0] == "eval":
            path = Path(args[args.index("--json") + 1])
            path.write_text(json.dumps({"metrics": {"fvd": 10.0 + len(calls), "frame_acc": 0.5,
                                                    "consistency": 0.9, "motion": 0.1}}))  # fmt: skip

    return run


def test_rerun_reuses_and_redoes_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    vr = load_script()
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(vr, "qdit", fake_qdit(calls))
    recipe = tmp_path / "r.json"
    recipe.write_text('{"a": 1}')
    base = ["--num", "4", "--steps", "2", "--seeds", "0,1", "--bits", "4", "--rows", "fp,token",
            "--work", str(tmp_path / "work"), "--recipe", str(recipe)]  # fmt: skip
    assert vr.main([*base, "--json", str(tmp_path / "a.json")]) == 0
    kinds = [c[0] for c in calls]
    # fp (2 seeds), token and searched (quantize + 2 seeds each)
    assert kinds.count("quantize") == 2 and kinds.count("sample") == 6 and kinds.count("eval") == 6
    first = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert [r["row"] for r in first] == ["fp", "token", "searched"]

    calls.clear()
    assert vr.main([*base, "--json", str(tmp_path / "b.json")]) == 0
    assert calls == []  # everything reused
    second = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["fvd"] for r in second] == [r["fvd"] for r in first]

    recipe.write_text('{"a": 2}')  # another recipe: only the searched row is redone
    assert vr.main([*base, "--json", str(tmp_path / "c.json")]) == 0
    assert [c[0] for c in calls] == ["quantize", "sample", "eval", "sample", "eval"]
    assert "--recipe" in calls[0]

    calls.clear()  # more steps: every sample is redone, no model is
    assert vr.main([*base[:2], "--steps", "3", *base[4:], "--json", str(tmp_path / "d.json")]) == 0
    assert [c[0] for c in calls].count("quantize") == 0 and [c[0] for c in calls].count("sample") == 6


def test_cached_only_tables_the_finished_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cached-only`` runs no command and tables only the rows whose every seed is cached, with the
    FVD differences from full precision on the same seeds."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    vr = load_script()
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(vr, "qdit", fake_qdit(calls))
    work = ["--num", "4", "--steps", "2", "--seeds", "0,1", "--bits", "4", "--work", str(tmp_path / "w")]
    assert vr.main([*work, "--rows", "fp,rtn"]) == 0
    calls.clear()
    out = tmp_path / "t.json"
    assert vr.main([*work, "--rows", "fp,rtn,token", "--cached-only", "--json", str(out)]) == 0
    assert calls == []
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["fp", "rtn"]
    fp, rtn = rows
    want = [r["fvd"] - f["fvd"] for r, f in zip(rtn["per_seed"], fp["per_seed"])]
    assert rtn["fvd_vs_fp"] == pytest.approx(sum(want) / 2) and "fvd_vs_fp" not in fp


def test_other_weights_of_the_same_model_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache keys name the model, not its weights: a work folder filled from other weights is refused
    with a one-line error and exit 2, running nothing and leaving the last table as it was."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    vr = load_script()
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(vr, "qdit", fake_qdit(calls))
    weights = tmp_path / "video.safetensors"
    weights.write_bytes(b"first weights")
    table = tmp_path / "t.json"
    args = ["--model", str(weights), "--num", "4", "--steps", "2", "--seeds", "0", "--bits", "4",
            "--rows", "fp,rtn", "--work", str(tmp_path / "w"), "--json", str(table)]  # fmt: skip
    assert vr.main(args) == 0
    assert [c[0] for c in calls] == ["sample", "eval", "quantize", "sample", "eval"]
    before = table.read_text()

    weights.write_bytes(b"retrained weights")
    calls.clear()
    assert vr.main(args) == 2
    assert calls == [] and table.read_text() == before
    assert vr.main([*args, "--cached-only"]) == 2  # nor are stale rows tabled

    weights.write_bytes(b"first weights")  # the weights the folder was made from: everything reused
    assert vr.main(args) == 0 and calls == []

    (tmp_path / "w" / "weights.json").unlink()  # a folder filled before the weights were recorded
    assert vr.main(args) == 2
    assert calls == [] and table.read_text() == before


def test_clips_whose_scoring_failed_are_scored_without_sampling_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    vr = load_script()
    calls: list[tuple[str, ...]] = []
    record = fake_qdit(calls)

    def failing_eval(*args: str) -> None:
        record(*args)
        if args[0] == "eval":
            raise RuntimeError("eval died")

    monkeypatch.setattr(vr, "qdit", failing_eval)
    args = ["--num", "4", "--steps", "2", "--seeds", "0", "--rows", "fp", "--work", str(tmp_path / "w")]
    with pytest.raises(RuntimeError):
        vr.main(args)
    assert [c[0] for c in calls] == ["sample", "eval"]
    calls.clear()
    monkeypatch.setattr(vr, "qdit", record)
    assert vr.main(args) == 0
    assert [c[0] for c in calls] == ["eval"]  # the clips were there, made with the same settings
    calls.clear()
    assert vr.main([*args[:2], "--steps", "3", *args[4:]]) == 0  # other settings: sampled again
    assert [c[0] for c in calls] == ["sample", "eval"]
