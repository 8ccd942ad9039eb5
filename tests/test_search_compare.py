"""``benchmarks/search_compare.py``: instance spelling, the per-seed verdicts and the table built from
finished search reports (the searches themselves are covered by the search tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench_scripts import load_benchmark


def load_script():  # type: ignore[no-untyped-def]
    return load_benchmark("search_compare")


def test_instance_spelling() -> None:
    sc = load_script()
    inst = sc.Instance.parse("w3a8/10/0/domain")
    assert (inst.w_bits, inst.a_bits, inst.steps, inst.seed, inst.features) == (3, 8, 10, 0, "domain")
    assert inst.name == "w3a8_steps10_seed0_domain"
    for bad in ("W4A8/10/0", "W4A8/ten/0/domain", "4A8/10/0/domain", "W4A8/10/0/clip"):
        with pytest.raises(ValueError, match="SETTING/STEPS/SEED/FEATURES"):
            sc.Instance.parse(bad)


def test_verdicts_count_wins_ties_losses() -> None:
    sc = load_script()
    # seed by seed: 99 vs 100 is a 1% difference (a tie at 1%), 90 a win, 105 a loss, 100.5 a tie
    assert sc.verdicts([99.0, 90.0, 105.0, 100.5], [100.0] * 4, 0.01) == (1, 2, 1)
    assert sc.verdicts([99.0, 90.0, 105.0, 100.5], [100.0] * 4, 0.0) == (2, 0, 2)


def _report(best: list[float], base: list[float], fitness: float, genome: list[int]) -> dict:
    def held(values: list[float]) -> dict:
        mean = sum(values) / len(values)
        return {"seeds": [101, 102], "values": values, "mean": mean, "std": 0.0}

    return {
        "best_fitness": fitness, "baseline_fitness": 50.0, "best_genome": genome, "evaluations": 10,
        "images_sampled": 640, "image_equivalents": 700.0, "seconds": 1.0,
        "heldout": {"best": held(best), "best@fp": held([b / 10 for b in best]),
                    "baseline": held(base), "baseline@fp": held([b / 10 for b in base])},
    }  # fmt: skip


def test_table_from_finished_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = load_script()
    done = tmp_path / "w4a8_steps10_seed0_domain"
    done.mkdir()
    (done / "full.json").write_text(json.dumps(_report([40.0, 44.0], [45.0, 43.0], 30.0, [1, 2])))
    (done / "cheap.json").write_text(json.dumps(_report([38.0, 44.2], [45.0, 43.0], 31.0, [1, 1])))
    unfinished = tmp_path / "w3a8_steps10_seed0_domain"
    unfinished.mkdir()
    (unfinished / "full.json").write_text(json.dumps({"best_fitness": 1.0}))  # no held-out part yet
    args = ["--only", "table", "--out-dir", str(tmp_path), "--instances", "W4A8/10/0/domain,W3A8/10/0/domain"]
    assert sc.main(args) == 0
    result = json.loads((tmp_path / "compare.json").read_text())
    assert [r["instance"] for r in result["rows"]] == ["w4a8_steps10_seed0_domain"]
    row = result["rows"][0]
    assert row["data"]["cheap_vs_full"] == {"wins": 1, "ties": 1, "losses": 0}
    assert row["data"]["full_beats_uniform"] == 1 and row["data"]["cheap_beats_uniform"] == 1
    assert row["same_genome"] is False
    table = (tmp_path / "compare.md").read_text()
    assert row["kernel"] == "fake"  # reports from before the setting
    assert (
        "| W4A8, 10 steps, seed 0, domain, fake quantization | 30.00 / 31.00 / 50.00 | 42.00 ± 0.00 | 41.10 ± 0.00 |"
        in table
    )
    assert "FD to data 1 wins, 1 ties, 0 losses" in table
    assert capsys.readouterr().out == table + "\n"


def test_bad_instance_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    sc = load_script()
    with pytest.raises(SystemExit) as e:
        sc.main(["--only", "table", "--instances", "W4A8/10"])
    assert e.value.code == 2
    assert "--instances: an instance is SETTING/STEPS/SEED/FEATURES" in capsys.readouterr().err


def test_tiny_comparison_runs_then_replays_from_its_states(tmp_path: Path) -> None:
    """Both searches on one tiny instance, the table, then ``--only verify``: replayed from copies of
    their saved states they give the committed recipes; a changed recipe is caught."""
    sc = load_script()
    args = ["--instances", "W4A8/1/0/domain", "--num-samples", "2", "--heldout-seeds", "101",
            "--heldout-samples", "2", "--out-dir", str(tmp_path),
            "--search-args", "--population 4 --top-k 2 --generations 1 --cheap-budget 4 --candidates 2"]  # fmt: skip
    assert sc.main(args) == 0
    result = json.loads((tmp_path / "compare.json").read_text())
    assert [r["instance"] for r in result["rows"]] == ["w4a8_steps1_seed0_domain"]
    assert result["rows"][0]["kernel"] == "auto"  # a new instance: integer kernels where they apply
    assert sc.main([*args, "--only", "verify"]) == 0
    recipe = tmp_path / "w4a8_steps1_seed0_domain" / "full.recipe.json"
    data = json.loads(recipe.read_text())
    data["default"]["w_group"] = 32 if data["default"]["w_group"] != 32 else 64
    recipe.write_text(json.dumps(data, indent=2) + "\n")
    with pytest.raises(SystemExit, match="full: the replay differs from the committed result in the recipe"):
        sc.main([*args, "--only", "verify"])


def test_an_instance_keeps_the_kernel_its_first_search_ran_on(tmp_path: Path) -> None:
    """Both searches of an instance measure candidates alike: an instance begun before the kernel setting
    (a state without one) goes on with fake quantization, for its second search too; a new one runs on
    the integer kernel where it applies."""
    import argparse

    sc = load_script()
    a = argparse.Namespace(model="embedded", choices="width", num_samples=4, heldout_seeds="101",
                           heldout_samples=4, threads=1, search_args="")  # fmt: skip
    inst = sc.Instance.parse("W4A8/10/1/domain")

    def kernel(method: str) -> str:
        args = sc.search_command(inst, method, tmp_path, a)
        return args[args.index("--kernel") + 1]

    assert kernel("full") == "auto" and kernel("cheap") == "auto"
    inception = sc.search_command(sc.Instance.parse("W4A8/10/2/inception"), "full", tmp_path / "i", a)
    assert inception[inception.index("--ref") + 1] == "fashion-mnist-test"  # Inception FID needs one
    assert "--ref" not in sc.search_command(inst, "full", tmp_path, a)
    (tmp_path / "full.state.json").write_text(json.dumps({"fingerprint": {"objective": {"steps": 10}}}))
    assert kernel("full") == "fake" and kernel("cheap") == "fake"
    (tmp_path / "full.state.json").write_text(json.dumps({"fingerprint": {"objective": {"kernel": "auto"}}}))
    assert kernel("cheap") == "auto"


def test_benchmarks_md_holds_the_table_of_the_committed_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BENCHMARKS.md's cheap-vs-full table is the one the committed search reports give (the header
    line, which carries the date the table was written, aside); a file without the block is refused."""
    import shutil

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main() sets it; restored after
    sc = load_script()
    committed = Path(sc.ROOT) / "benchmarks" / "results" / "search_compare"
    for f in committed.glob("*/*.json"):  # reports, recipes and states: everything --only table reads
        (tmp_path / f.parent.name).mkdir(exist_ok=True)
        shutil.copy(f, tmp_path / f.parent.name / f.name)
    doc = (Path(sc.ROOT) / "BENCHMARKS.md").read_text()
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(doc)
    assert sc.main(["--only", "table", "--out-dir", str(tmp_path), "--update-benchmarks", str(md)]) == 0
    regenerated, committed_block = sc.TABLE.read(md.read_text()), sc.TABLE.read(doc)
    assert regenerated.split("\n", 1)[1] == committed_block.split("\n", 1)[1], (
        "BENCHMARKS.md's cheap-vs-full table is not the committed searches': run python "
        "benchmarks/search_compare.py --only table --update-benchmarks"
    )
    assert "| W3A8, 10 steps, seed 0, domain, fake quantization |" in committed_block
    md.write_text("no block\n")
    assert sc.main(["--only", "table", "--out-dir", str(tmp_path), "--update-benchmarks", str(md)]) == 2
    assert md.read_text() == "no block\n"
