"""Smoke test of ``benchmarks/results.py`` (the results table): a tiny quick run, then a resumed one."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from bench_scripts import load_benchmark


def load_script():  # type: ignore[no-untyped-def]
    return load_benchmark("results")


def test_recovered_fraction() -> None:
    results = load_script()
    assert results.recovered(rtn=100.0, fp=20.0, value=40.0) == pytest.approx(0.75)
    assert results.recovered(rtn=100.0, fp=20.0, value=120.0) == pytest.approx(-0.25)
    assert results.recovered(rtn=20.0, fp=20.0, value=20.0) is None
    assert results.recovered(rtn=None, fp=20.0, value=20.0) is None
    assert results.parse_setting("w4a6") == (4, 6)


def test_quick_table_runs_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main() sets it for its qdit commands; restored after
    results = load_script()
    args = ["--quick", "--num", "8", "--steps", "2", "--calib-samples", "2", "--calib-steps", "2",
            "--rows", "fp,rtn,smoothquant", "--threads", "1", "--grid-count", "4",
            "--out-dir", str(tmp_path)]  # fmt: skip
    assert results.main(args) == 0
    first = capsys.readouterr().out
    assert "$ qdit quantize --model embedded --w-bits 4 --a-bits 8 --baseline smoothquant" in first
    table = json.loads((tmp_path / "w4a8.json").read_text())
    rows = {r["row"]: r for r in table["rows"]}
    assert set(rows) == {"rtn", "smoothquant"}
    fp = json.loads((tmp_path / "fp.json").read_text())["rows"][0]
    for r in (*rows.values(), fp):
        assert r["seeds"] == [0] and set(r["per_seed"][0]) >= {"domain_fd", "class_acc"}
        assert r["domain_fd"] > 0 and 0 <= r["class_acc"] <= 1
    assert 4 < rows["rtn"]["bits_per_weight"] < 5
    sq = rows["smoothquant"]
    want = (rows["rtn"]["domain_fd"] - sq["domain_fd"]) / (rows["rtn"]["domain_fd"] - fp["domain_fd"])
    assert sq["recovered"] == pytest.approx(want) and sq["recovered_metric"] == "domain_fd"
    meta = table["meta"]
    assert meta["torch"] and meta["date"] and meta["machine"]
    md = (tmp_path / "results.md").read_text()
    assert "| W4A8 | SmoothQuant (alpha 0.5, static act.) |" in md and "torch" in md
    assert (tmp_path / "fid_vs_bpw.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0
    # resumable: a second run does no work and writes the same rows
    assert results.main(args) == 0
    second = capsys.readouterr().out
    assert "$ qdit" not in second and second.count("done already") == 3
    again = json.loads((tmp_path / "w4a8.json").read_text())
    assert [r["domain_fd"] for r in again["rows"]] == [r["domain_fd"] for r in table["rows"]]


def test_search_rows_share_one_search_and_follow_its_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cheap-search row and its GPTQ variant run one search and quantize its recipe (the variant
    with GPTQ weights); a searched-again recipe redoes both rows' models and samples. The qdit commands
    are a recorder that writes the files they would write; what is checked is which commands run."""
    results = load_script()
    calls: list[tuple[str, ...]] = []
    recipe_text = {"value": '{"version": 1}'}

    def fake(*args: str) -> None:
        calls.append(args)
        if "--json" in args and args[0] == "eval":
            Path(args[args.index("--json") + 1]).write_text(json.dumps({"metrics": {"domain_fd": 1.0}}))
            return
        out = Path(args[args.index("--out") + 1])
        if args[0] == "search":
            out.write_text(recipe_text["value"])
        elif args[0] == "quantize":
            out.mkdir(parents=True, exist_ok=True)
            (out / "qdit.json").write_text("{}")
            Path(args[args.index("--json") + 1]).write_text("{}")
        elif args[0] == "sample":
            out.write_bytes(b"npz")

    monkeypatch.setattr(results, "qdit", fake)
    a = argparse.Namespace(out_dir=str(tmp_path), model="embedded", num=4, steps=2, metrics=["domain_fd"],
                           calib_samples=2, calib_steps=2, bf16=False, full_search_args="",
                           cheap_search_args="--choices width", key_rows=["qdit_cheap_gptq"], seeds=[0, 1],
                           batch_size=4)  # fmt: skip
    runner = results.Runner(a)
    first = runner.row("qdit_cheap", "W4A8")
    runner.row("qdit_cheap_gptq", "W4A8")
    assert first["recipe_sha256"] == hashlib.sha256(recipe_text["value"].encode()).hexdigest()
    kinds = [c[0] for c in calls]
    assert kinds.count("search") == 1 and kinds.count("quantize") == 2
    assert kinds.count("sample") == 3  # the key row has both seeds
    search = next(c for c in calls if c[0] == "search")
    assert "--choices" in search and search[search.index("--method") + 1] == "cheap"
    recipe = search[search.index("--out") + 1]
    quantize = [c for c in calls if c[0] == "quantize"]
    assert all(c[c.index("--recipe") + 1] == recipe for c in quantize)
    assert (
        "--weight-method" not in quantize[0]
        and quantize[1][quantize[1].index("--weight-method") + 1] == "gptq"
    )

    calls.clear()
    runner.row("qdit_cheap", "W4A8")
    assert calls == []  # reused
    recipe_text["value"] = '{"version": 1, "overrides": {}}'
    Path(recipe).write_text(recipe_text["value"])  # searched again: another recipe
    runner.row("qdit_cheap", "W4A8")
    assert [c[0] for c in calls] == ["quantize", "sample", "eval"]

    a.cheap_search_args = "--choices width --fitness fd-fp"  # other search flags: another search
    recipe_text["value"] = '{"version": 1, "overrides": {"x": {}}}'  # which finds another recipe
    calls.clear()
    row = runner.row("qdit_cheap", "W4A8")
    assert [c[0] for c in calls] == ["search", "quantize", "sample", "eval"]
    again = Path(calls[0][calls[0].index("--out") + 1])
    assert str(again) != recipe
    assert row["search"] == "--method cheap --choices width --fitness fd-fp --steps 2"
    a.cheap_search_args = "--fitness=fd-fp --choices width"  # the same search spelled otherwise
    calls.clear()
    assert runner.row("qdit_cheap", "W4A8")["search"] == row["search"] and calls == []

    # the recipes the rows used are kept beside the JSON, named with the weights: a clone without
    # work/ quantizes from the kept one instead of searching again
    kept = tmp_path / "recipes" / again.name.replace(".recipe.json", f"_{runner.weights[:12]}.recipe.json")
    assert kept.read_text() == recipe_text["value"] and len(list(kept.parent.iterdir())) == 2  # both searches
    shutil.rmtree(tmp_path / "work")
    calls.clear()
    results.Runner(a).row("qdit_cheap", "W4A8")
    assert [c[0] for c in calls] == ["quantize", "sample", "eval"]
    assert Path(calls[0][calls[0].index("--recipe") + 1]).read_text() == recipe_text["value"]


def test_the_ablation_says_where_a_step_does_not_improve() -> None:
    """Each Q-DiT step against the step it adds to, on the seeds both rows have (paired)."""
    results = load_script()

    def row(key: str, *fids: float) -> dict:
        return {"row": key, "seeds": list(range(len(fids))), "per_seed": [{"fid": f} for f in fids]}

    tables = {
        "W4A8": [row("fp", 28.0, 28.4, 27.9), row("qdit_g128", 30.4), row("qdit_dynamic", 30.0, 31.0, 29.0),
                 row("qdit_full", 30.5, 31.4, 29.6), row("qdit_cheap", 29.9, 31.3, 28.9),
                 row("qdit_gptq", 29.0, 30.2, 27.9)],
        "W8A8": [row("qdit_dynamic", 28.2)],  # nothing to compare with
    }  # fmt: skip
    lines = results.ablation(tables, "fid")
    assert len(lines) == 1 and lines[0].startswith("- W4A8: ")
    parts = lines[0].removeprefix("- W4A8: ").split("; ")
    assert parts == [
        # seed 0 only: the g128 row has no other
        "+ dynamic act. (token) over group 128 (static act.): 30.40 -> 30.00, one seed only, not a verdict (one seed, difference -0.40)",
        # worse on every seed: +0.5, +0.4, +0.6
        "+ full search over + dynamic act. (token): 30.00 -> 30.50, does not improve (3 seeds, difference +0.50 ± 0.10)",
        # -0.1, +0.3, -0.1: a mean of +0.03 against a spread of 0.23
        "+ cheap search over + dynamic act. (token): 30.00 -> 30.03, within the seeds' spread "
        "(3 seeds, difference +0.03 ± 0.23)",
        "+ GPTQ weights over + dynamic act. (token): 30.00 -> 29.03, improves (3 seeds, difference -0.97 ± 0.15)",
    ]
    assert results.ablation(tables, "class_acc") == []  # a metric no row has


def test_the_targets_name_the_best_searched_row_and_the_hardest_setting() -> None:
    """Issue 12's targets read off a hand-made table: ratios to full precision, the lowest unsearched
    row, and the recovery at the hardest setting where RTN is >= 2x FP (computed from the rows' values,
    not from a ``recovered`` field a caller may not have filled in)."""
    results = load_script()

    def row(key: str, fid: float | None, seeds: int = 1, std: float | None = None) -> dict:
        return {"row": key, "label": key, "seeds": list(range(seeds)), "fid": fid, "fid_std": std}

    fp = row("fp", 20.0, 3)
    tables = {
        "W6A8": [fp, row("rtn", 22.0), row("gptq", 20.3, 3, 0.4), row("qdit_full", 20.5, 3), row("qdit_cheap", 20.9)],
        "W4A8": [fp, row("rtn", 24.0), row("gptq", 22.5), row("qdit_full", 22.6), row("qdit_full_gptq", 21.8),
                 row("qdit_cheap", None)],
        "W3A8": [fp, row("rtn", 45.0), row("qdit_dynamic", 30.0)],  # >= 2x, but nothing searched yet
        "W4A4": [fp, row("rtn", 120.0), row("qdit_cheap", 28.0), row("qdit_full", 31.0)],
        "W2A8": [row("rtn", 300.0), row("qdit_full", 40.0)],  # no full precision to compare with
        "W5A8": [fp, row("qdit_full", 20.1)],
    }  # fmt: skip
    assert results.acceptance(tables, "fid") == [
        # 20.5 / 20 = 1.025 > 1.02; GPTQ's 20.3 is lower
        "- W6A8: best searched row qdit_full (3 seeds) 1.025x FP (misses <= 1.02x); not lower than every unsearched "
        "row (the lowest: gptq, 20.30 ± 0.40, 3 seeds); RTN 1.10x FP",
        # 21.8 / 20 = 1.09; the cheap row without a value is left out
        "- W4A8: best searched row qdit_full_gptq (1 seed) 1.090x FP (meets <= 1.10x); lower mean than every "
        "unsearched row (the lowest: gptq, 22.50, 1 seed); RTN 1.20x FP",
        "- W3A8: no searched Q-DiT row yet",
        "- W4A4: best searched row qdit_cheap (1 seed) 1.400x FP; lower mean than the only unsearched row (the "
        "lowest: rtn, 120.00, 1 seed); RTN 6.00x FP",
        "- W2A8: no full-precision value to compare with",
        "- W5A8: best searched row qdit_full (1 seed) 1.005x FP; no unsearched row to compare with",
        # W4A4's RTN (6x) is harder than W3A8's (2.25x): (120 - 28) / (120 - 20) = 0.92
        "- Hardest setting with RTN >= 2x FP: W4A4 (RTN 6.00x); qdit_cheap recovers 0.920 of RTN's loss (meets >= 0.90)",
    ]
    tables["W4A4"][2]["fid"] = 30.0  # (120 - 30) / 100 = 0.900: meets, just
    assert results.acceptance(tables, "fid")[-1].endswith("recovers 0.900 of RTN's loss (meets >= 0.90)")
    tables["W4A4"][2]["fid"] = 31.0  # now qdit_cheap and qdit_full tie at 31: 0.89
    assert results.acceptance(tables, "fid")[-1].endswith("recovers 0.890 of RTN's loss (misses >= 0.90)")
    del tables["W4A4"]  # now W3A8 is the hardest, and it has no searched row
    assert results.acceptance(tables, "fid")[-1] == (
        "- Hardest setting with RTN >= 2x FP: W3A8 (RTN 2.25x); no searched row yet"
    )
    del tables["W3A8"]
    assert results.acceptance(tables, "fid")[-1] == "- No setting measured so far has RTN at >= 2x full precision."
    assert results.acceptance(tables, "class_acc") == []  # higher is better: no ratios to read


def test_benchmarks_md_holds_the_table_of_the_committed_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every number of BENCHMARKS.md's results table comes from the JSON beside it: rebuilt from the
    committed JSON alone (running nothing), the block is what BENCHMARKS.md holds."""
    import shutil

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main() sets it for its qdit commands; restored after
    results = load_script()
    committed = Path(results.ROOT) / "benchmarks" / "results"
    for f in committed.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text((Path(results.ROOT) / "BENCHMARKS.md").read_text())
    assert results.main(["--table-only", "--threads", "1", "--out-dir", str(tmp_path), "--update-benchmarks", str(md)]) == 0
    assert md.read_text() == (Path(results.ROOT) / "BENCHMARKS.md").read_text(), (
        "BENCHMARKS.md's results table is not the committed JSON's: run python benchmarks/results.py "
        "--table-only --update-benchmarks"
    )
    assert "| W4A8 | GPTQ + per-token act. |" in results.TABLE.read(md.read_text())


def test_table_only_runs_nothing_and_needs_the_markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = load_script()
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(results, "qdit", lambda *args: calls.append(args))
    fp = {"row": "fp", "label": "full precision", "seeds": [0], "per_seed": [{"fid": 20.0}], "fid": 20.0,
          "bits_per_weight": 16.0, "config": {"model": "embedded", "num": 1000, "steps": 50, "cfg": 1.5,
          "metrics": ["fid"], "calib_samples": 16, "calib_steps": 25}}  # fmt: skip
    rtn = {**fp, "row": "rtn", "label": "RTN", "w_bits": 4, "a_bits": 8, "fid": 30.0, "bits_per_weight": 4.1}
    meta = {"machine": "m", "cpus": 2, "threads": 1, "torch": "t", "date": "2026-01-01 00:00"}
    (tmp_path / "fp.json").write_text(json.dumps({"rows": [fp], "meta": meta}))
    (tmp_path / "w4a6.json").write_text(json.dumps({"rows": [rtn], "meta": {**meta, "date": "2026-01-02 00:00"}}))
    md = tmp_path / "B.md"
    md.write_text("# title\nno markers\n")
    args = ["--table-only", "--metrics", "fid", "--out-dir", str(tmp_path), "--update-benchmarks", str(md)]
    assert results.main(args) == 2 and md.read_text() == "# title\nno markers\n"
    md.write_text(f"# title\n{results.TABLE.begin}\nold table\n{results.TABLE.end}\nafter\n")
    assert results.main(args) == 0 and calls == []
    text = md.read_text()
    assert text.startswith(f"# title\n{results.TABLE.begin}\nembedded: ") and text.endswith(f"{results.TABLE.end}\nafter\n")
    block = results.TABLE.read(text)
    assert "old table" not in block and "| W4A6 | RTN | 4.10 | 30.00 |" in block  # the hard setting found
    assert "JSON last written 2026-01-01 00:00 to 2026-01-02 00:00" in block
    assert block == (tmp_path / "results.md").read_text()


def test_psnr_against_full_precision_of_the_same_seed(tmp_path: Path) -> None:
    """Each seed's images against full precision's of that seed: a shift of 5 grey levels everywhere
    is an MSE of 25, 10 log10(255^2 / 25) = 34.15 dB. Only samples that are the scored ones count:
    other labels, scores that are not the row's, samples drawn again since, or no file give nothing."""
    import numpy as np

    results = load_script()
    labels = np.arange(4)
    imgs = np.full((4, 8, 8, 1), 100, np.uint8)

    def put(name: str, seed: int, images, lab, fid: float, drawn: dict | None = None) -> None:
        np.savez(tmp_path / f"{name}_s{seed}.npz", arr_0=images, labels=lab)
        (tmp_path / f"{name}_s{seed}.metrics.json").write_text(
            json.dumps({"config": {"steps": 2, "metrics": ["fid"]}, "values": {"fid": fid}}))
        if drawn is not None:
            size = (tmp_path / f"{name}_s{seed}.npz").stat().st_size  # as bench_common.sample_once stamps
            (tmp_path / f"{name}_s{seed}.sample.json").write_text(json.dumps({"config": drawn, "size": size}))

    for seed in (0, 1, 2, 3):
        put("fp", seed, imgs, labels if seed != 1 else labels[::-1], 20.0 + seed)
    put("w4a8_rtn", 0, imgs + 5, labels, 30.0, drawn={"steps": 2})
    put("w4a8_rtn", 1, imgs - 5, labels, 31.0)  # labels differ from full precision's seed 1
    put("w4a8_rtn", 2, imgs - 5, labels, 99.0)  # cached scores that are not the row's
    put("w4a8_rtn", 3, imgs - 5, labels, 33.0, drawn={"steps": 5})  # drawn again with other settings
    fp = {"row": "fp", "seeds": [0, 1, 2, 3], "per_seed": [{"fid": 20.0 + s} for s in range(4)]}
    row = {"row": "rtn", "w_bits": 4, "a_bits": 8, "seeds": [0, 1, 2, 3, 4],
           "per_seed": [{"fid": 30.0}, {"fid": 31.0}, {"fid": 32.0}, {"fid": 33.0}, {"fid": 34.0}]}  # fmt: skip
    assert results.add_psnr(row, fp, tmp_path)
    assert row["per_seed"][0]["psnr_fp"] == pytest.approx(34.1514, abs=1e-4)
    assert all("psnr_fp" not in v for v in row["per_seed"][1:])
    assert row["psnr_fp"] == pytest.approx(34.1514, abs=1e-4) and row["psnr_fp_std"] is None
    assert not results.add_psnr(row, fp, tmp_path)  # nothing new
    assert not results.add_psnr(fp, fp, tmp_path)
    fp["per_seed"][0]["fid"] = 20.5  # full precision's scores are not those of the samples there
    row["per_seed"][0].pop("psnr_fp")
    assert not results.add_psnr(row, fp, tmp_path)


def test_a_row_is_stored_beside_rows_another_run_wrote_since(tmp_path: Path) -> None:
    """Two runs on one setting: the second run's row joins the rows the first wrote after the second
    read the file (not the file as the second run read it); the same row is replaced; rows of another
    configuration stay after them, untouched; the order is the table's."""
    results = load_script()
    path = tmp_path / "w4a8.json"
    lock = results.lock_of(path)
    assert lock == tmp_path / "work" / "w4a8.json.lock"
    mine, old = {"num": 1000}, {"num": 10}
    path.write_text(json.dumps({"rows": [{"row": "rtn", "config": old, "fid": 1.0}], "meta": {}}))
    # another run wrote qdit_full (after this run had read the file and found nothing of its config)
    results.store_row(path, {"row": "qdit_full", "config": mine, "fid": 3.0}, mine, {"run": "other"})
    done = results.store_row(path, {"row": "gptq", "config": mine, "fid": 2.0}, mine, {"run": "this"})
    data = json.loads(path.read_text())
    assert [(r["row"], r["config"]["num"]) for r in data["rows"]] == [("gptq", 1000), ("qdit_full", 1000), ("rtn", 10)]
    assert sorted(done) == ["gptq", "qdit_full"] and data["meta"] == {"run": "this"}
    results.store_row(path, {"row": "gptq", "config": mine, "fid": 2.5}, mine, {})
    fids = [r["fid"] for r in json.loads(path.read_text())["rows"]]
    assert fids == [2.5, 3.0, 1.0]

    # while one run holds the lock, another's store waits for it
    import threading

    with results.locked(lock):
        other = threading.Thread(target=results.store_row,
                                 args=(path, {"row": "rtn", "config": mine, "fid": 4.0}, mine, {}))  # fmt: skip
        other.start()
        other.join(timeout=0.5)
        assert other.is_alive() and [r["fid"] for r in json.loads(path.read_text())["rows"]] == [2.5, 3.0, 1.0]
    other.join(timeout=10)
    assert [r["fid"] for r in json.loads(path.read_text())["rows"]] == [4.0, 2.5, 3.0, 1.0]


def test_lock_files_are_not_taken_for_cached_models(tmp_path: Path) -> None:
    """A --table-only run on a fresh clone leaves only lock files in work/; the next run must not
    refuse the folder as one of cached models of unknown weights (a real cached file still is)."""
    results = load_script()
    work = tmp_path / "work"
    with results.locked(work / "w4a8.json.lock"):
        pass
    assert results.check_weights(work, "embedded", record=False) is None
    (work / "w4a8_rtn_s0.npz").write_bytes(b"npz")
    assert "without a record of the weights" in results.check_weights(work, "embedded", record=False)


def test_the_table_says_which_cpus_the_rows_were_measured_on(tmp_path: Path) -> None:
    """The line under the table names every CPU model its files were written on, and says so where a
    file is from before the model was recorded."""
    results = load_script()
    meta = {"machine": "x86_64", "cpus": 2, "threads": 1, "torch": "2.13.0+cpu", "date": "2026-12-02 10:00"}
    (tmp_path / "fp.json").write_text(json.dumps({"rows": [], "meta": {**meta, "cpu": "AMD EPYC"}}))
    (tmp_path / "w4a8.json").write_text(json.dumps({"rows": [], "meta": {**meta, "date": "2026-11-30 09:00"}}))
    assert results.measured(tmp_path, ["W4A8", "W6A8"]) == (
        "machine x86_64 (CPU AMD EPYC, unrecorded; 2 CPUs, 1 threads), torch 2.13.0+cpu, "
        "JSON last written 2026-11-30 09:00 to 2026-12-02 10:00"
    )
    assert results.run_meta(argparse.Namespace())["cpu"]  # this machine's, never empty


def test_the_grid_is_kept_when_a_row_has_no_samples_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """grid.png has one strip per row of the setting; with a row's samples missing from work/ (a fresh
    clone, another machine) the grid there is kept whole rather than rewritten without that row."""
    import numpy as np
    from PIL import Image

    results = load_script()
    work, path = tmp_path / "work", tmp_path / "grid.png"
    work.mkdir()
    rows = [{"row": "fp", "label": "full precision", "seeds": [0]},
            {"row": "rtn", "label": "RTN", "w_bits": 4, "a_bits": 8, "seeds": [0]}]  # fmt: skip
    for name in ("fp", "w4a8_rtn"):
        np.savez(work / f"{name}_s0.npz", arr_0=np.zeros((4, 28, 28, 1), np.uint8))
    results.grid({"W4A8": rows}, "W4A8", work, path, 3)
    assert Image.open(path).size == (230 + 3 * 28, 2 * (28 + 2))
    before = path.read_bytes()
    (work / "w4a8_rtn_s0.npz").unlink()
    results.grid({"W4A8": rows}, "W4A8", work, path, 3)
    assert path.read_bytes() == before
    assert f"grid.png kept as it is: no samples in {work} for RTN" in capsys.readouterr().out


def test_a_work_folder_of_other_weights_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = load_script()
    work = tmp_path / "work"
    work.mkdir()
    (work / "fp_s0.npz").write_bytes(b"samples")  # cached, with no record of the weights
    args = ["--table-only", "--out-dir", str(tmp_path)]
    assert results.main(args) == 2
    assert "without a record of the weights of embedded" in capsys.readouterr().err
    (work / "weights.json").write_text(json.dumps({"embedded": "0" * 64}))
    assert results.main(args) == 2
    assert "other weights of embedded (sha256 000000000000" in capsys.readouterr().err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["work"]  # nothing written


def test_a_row_searched_with_other_flags_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished search row whose flags are not the run's is searched and measured again; the same
    flags spelled in another order are the same search (nothing runs)."""
    import numpy as np

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = load_script()
    calls: list[tuple[str, ...]] = []

    def fake(*args: str) -> None:  # writes what the command would, so the run can go on
        calls.append(args)
        if args[0] == "eval":
            Path(args[args.index("--json") + 1]).write_text(json.dumps({"metrics": {"domain_fd": 2.0}}))
            return
        out = Path(args[args.index("--out") + 1])
        if args[0] == "search":
            out.write_text('{"version": 1}')
        elif args[0] == "quantize":
            out.mkdir(parents=True, exist_ok=True)
            (out / "qdit.json").write_text("{}")
            Path(args[args.index("--json") + 1]).write_text("{}")
        else:
            np.savez(out, arr_0=np.zeros((4, 8, 8, 1), np.uint8), labels=np.arange(4))

    monkeypatch.setattr(results, "qdit", fake)
    config = {"model": "embedded", "num": 4, "steps": 2, "cfg": 1.5, "metrics": ["domain_fd"],
              "calib_samples": 2, "calib_steps": 2}  # fmt: skip

    def row(key: str, **extra: object) -> dict:
        return {"row": key, "label": key, "seeds": [0], "per_seed": [{"domain_fd": 1.0}], "domain_fd": 1.0,
                "w_bits": 4, "a_bits": 8, "bits_per_weight": 4.2, "config": config, **extra}  # fmt: skip

    (tmp_path / "fp.json").write_text(json.dumps({"rows": [row("fp")], "meta": {}}))
    old = row("qdit_cheap", search="--method cheap --steps 2 --choices width")
    (tmp_path / "w4a8.json").write_text(json.dumps({"rows": [old], "meta": {}}))
    args = ["--settings", "W4A8", "--rows", "qdit_cheap", "--num", "4", "--steps", "2", "--metrics", "domain_fd",
            "--calib-samples", "2", "--calib-steps", "2", "--seeds", "0", "--threads", "1",
            "--out-dir", str(tmp_path)]  # fmt: skip
    assert results.main([*args, "--cheap-search-args", "--choices width"]) == 0  # the same search
    assert calls == [] and "done already" in capsys.readouterr().out
    assert results.main([*args, "--cheap-search-args", "--choices width --fitness fd-fp"]) == 0
    assert [c[0] for c in calls] == ["search", "quantize", "sample", "eval"]
    (new,) = json.loads((tmp_path / "w4a8.json").read_text())["rows"]
    assert new["search"] == "--method cheap --choices width --fitness fd-fp --steps 2" and new["domain_fd"] == 2.0
