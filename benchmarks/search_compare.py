"""Is the cheap search as good as the full one? Both searches on several instances, judged on held-out seeds.

An instance is a bit setting, a number of DDIM steps, a search seed and a feature space, spelled
``W3A8/10/0/domain`` (``inception`` for Inception FID as the fitness). For each instance this runs

    qdit search --method full  ... --state <dir>/full.state.json  --json <dir>/full.json  --out <dir>/full.recipe.json
    qdit search --method cheap ... --state <dir>/cheap.state.json --json <dir>/cheap.json --out <dir>/cheap.recipe.json

with the same model, choices, budget, fitness samples and held-out seeds, so both winners (and the
uniform baseline meeting the same budget) are measured with the same noise on seeds neither search
saw. Every command is printed and resumable: run the script again after an interruption and each
search continues from its state file; finished searches are skipped.

Per held-out seed, cheap vs full is a win when the cheap winner's Fréchet distance is lower by more
than ``--tie`` (relative, default 1% of the full winner's), a loss when higher by more, a tie
otherwise. Writes ``<out-dir>/compare.json`` and ``<out-dir>/compare.md`` (the table for BENCHMARKS.md).

    python benchmarks/search_compare.py [--instances W3A8/10/0/domain,W4A8/10/1/domain,...]
        [--num-samples 64] [--heldout-seeds 101,102,103,104] [--heldout-samples 256] [--threads 1]
        [--only run|table] [--out-dir benchmarks/results/search_compare]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_common import Block, run_meta

ROOT = Path(__file__).resolve().parents[1]
TABLE = Block("search_compare.py table")  # the region of BENCHMARKS.md this script writes
DEFAULT_INSTANCES = "W3A8/10/0/domain,W4A8/10/1/domain,W4A6/10/0/domain,W4A8/50/0/domain,W4A8/10/2/inception"
METHODS = ("full", "cheap")


@dataclass(frozen=True)
class Instance:
    w_bits: int
    a_bits: int
    steps: int
    seed: int
    features: str

    @classmethod
    def parse(cls, text: str) -> Instance:
        try:
            setting, steps, seed, features = text.strip().split("/")
            s = setting.upper()
            if not (s.startswith("W") and "A" in s):
                raise ValueError
            w, a = s[1:].split("A", 1)
            if features not in ("domain", "inception"):
                raise ValueError
            return cls(int(w), int(a), int(steps), int(seed), features)
        except ValueError:
            raise ValueError(
                f"an instance is SETTING/STEPS/SEED/FEATURES such as W4A8/10/0/domain "
                f"(features: domain or inception), got {text!r}"
            ) from None

    @property
    def name(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}_steps{self.steps}_seed{self.seed}_{self.features}"

    @property
    def label(self) -> str:
        return f"W{self.w_bits}A{self.a_bits}, {self.steps} steps, seed {self.seed}, {self.features}"


def instance_kernel(folder: Path) -> str:
    """What both searches of an instance run their candidates on (the same fitness for both): what the
    first saved state there was made with (``fake`` for instances begun before the setting), else
    ``auto`` (the AMX integer kernel where it applies)."""
    from qdit.search.session import saved_kernel, saved_objective

    states = [folder / f"{m}.state.json" for m in METHODS]
    return next((saved_kernel(saved_objective(s)) for s in states if s.is_file()), "auto")


def search_command(inst: Instance, method: str, folder: Path, a: argparse.Namespace) -> list[str]:
    state = folder / f"{method}.state.json"
    return [
        "search", "--model", a.model, "--choices", a.choices, "--w-bits", str(inst.w_bits),
        "--a-bits", str(inst.a_bits), "--method", method, "--steps", str(inst.steps),
        "--num-samples", str(a.num_samples), "--seed", str(inst.seed), "--features", inst.features,
        # Inception FID takes its reference from --ref (the domain features know the test set)
        *(["--ref", "fashion-mnist-test"] if inst.features == "inception" else []),
        "--fitness", "fd", "--heldout-seeds", a.heldout_seeds, "--heldout-samples", str(a.heldout_samples),
        "--threads", str(a.threads), "--no-progress", "--kernel", instance_kernel(folder),
        *a.search_args.split(), "--state", str(state),
        *(["--resume"] if state.is_file() else []),
        "--json", str(folder / f"{method}.json"), "--out", str(folder / f"{method}.recipe.json"),
    ]  # fmt: skip


def verify(instances: list[Instance], a: argparse.Namespace) -> list[str]:
    """Replay every finished search from a copy of its saved state (``qdit search --resume``, no
    held-out seeds): the replay must evaluate nothing new and give the committed recipe and best
    fitness. Returns one line per search checked; raises ``SystemExit`` on a mismatch."""
    import shutil
    import tempfile

    out, lines = Path(a.out_dir), []
    for inst in instances:
        for method in METHODS:
            folder = out / inst.name
            report_path = folder / f"{method}.json"
            if not finished(report_path):
                continue
            committed = json.loads(report_path.read_text())
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                shutil.copy(folder / f"{method}.state.json", work / f"{method}.state.json")
                feats = folder / f"{method}.state.json.features"
                if feats.is_dir():
                    shutil.copytree(feats, work / f"{method}.state.json.features")
                args = search_command(inst, method, work, a)
                cut = args.index("--heldout-seeds")
                args = args[:cut] + args[cut + 4 :]  # no held-out measurement: only the search itself
                print("$ qdit", " ".join(args), flush=True)
                subprocess.run([sys.executable, "-m", "qdit", *args], check=True, capture_output=True)
                replay = json.loads((work / f"{method}.json").read_text())
                same_recipe = (work / f"{method}.recipe.json").read_text() == (
                    folder / f"{method}.recipe.json"
                ).read_text()
            keys = ("best_genome", "best_fitness", "evaluations", "images_sampled")
            diff = [k for k in keys if replay.get(k) != committed.get(k)]
            if diff or not same_recipe:
                raise SystemExit(
                    f"{inst.name} {method}: the replay differs from the committed result in "
                    f"{', '.join(diff + ([] if same_recipe else ['the recipe']))}"
                )
            lines.append(
                f"{inst.label}, {method}: replayed from its state, same recipe, best fitness "
                f"{replay['best_fitness']:.4f}, {replay['evaluations']} evaluations"
            )
    return lines


def finished(report: Path) -> bool:
    if not report.is_file():
        return False
    return "heldout" in json.loads(report.read_text())


def run(instances: list[Instance], a: argparse.Namespace) -> None:
    out = Path(a.out_dir)
    for inst in instances:
        folder = out / inst.name
        folder.mkdir(parents=True, exist_ok=True)
        for method in METHODS:
            if finished(folder / f"{method}.json"):
                print(f"== {inst.label}: {method} done already (skipped)", flush=True)
                continue
            print(f"== {inst.label}: {method}", flush=True)
            args = search_command(inst, method, folder, a)
            print("$ qdit", " ".join(args), flush=True)
            with open(folder / f"{method}.log", "a") as log:
                subprocess.run([sys.executable, "-m", "qdit", *args], check=True, stdout=log, stderr=log)


def verdicts(cheap: list[float], full: list[float], tie: float) -> tuple[int, int, int]:
    """(wins, ties, losses) of cheap against full, seed by seed (lower is better)."""
    wins = ties = losses = 0
    for c, f in zip(cheap, full, strict=True):
        if abs(c - f) <= tie * abs(f):
            ties += 1
        elif c < f:
            wins += 1
        else:
            losses += 1
    return wins, ties, losses


def compare(instances: list[Instance], a: argparse.Namespace) -> dict:
    out = Path(a.out_dir)
    rows = []
    for inst in instances:
        reports = {m: out / inst.name / f"{m}.json" for m in METHODS}
        if not all(finished(p) for p in reports.values()):
            continue
        r = {m: json.loads(p.read_text()) for m, p in reports.items()}
        row: dict = {"instance": inst.name, "label": inst.label}
        for key, tag in (("data", ""), ("fp", "@fp")):  # held-out distance to the data / to the float model
            full, cheap = r["full"]["heldout"][f"best{tag}"], r["cheap"]["heldout"][f"best{tag}"]
            base = r["full"]["heldout"][f"baseline{tag}"]
            if full["seeds"] != cheap["seeds"]:
                raise SystemExit(f"{inst.name}: the two searches were held out on other seeds")
            w, t, l_ = verdicts(cheap["values"], full["values"], a.tie)
            row[key] = {
                "full": full, "cheap": cheap, "uniform": base,
                "cheap_vs_full": {"wins": w, "ties": t, "losses": l_},
                "full_beats_uniform": sum(f < b for f, b in zip(full["values"], base["values"])),
                "cheap_beats_uniform": sum(c < b for c, b in zip(cheap["values"], base["values"])),
            }  # fmt: skip
        for m in METHODS:
            row[m] = {
                "fitness": r[m]["best_fitness"], "evaluations": r[m]["evaluations"],
                "images_sampled": r[m]["images_sampled"], "image_equivalents": r[m]["image_equivalents"],
                "seconds": r[m]["seconds"], "genome": r[m]["best_genome"],
            }  # fmt: skip
        kernels = {m: r[m].get("kernel", "fake") for m in METHODS}  # reports before the setting: fake
        if len(set(kernels.values())) != 1:
            raise SystemExit(f"{inst.name}: the two searches ran their candidates on other kernels "
                             f"({', '.join(f'{m} on {k}' for m, k in kernels.items())})")  # fmt: skip
        row["kernel"] = kernels["full"]
        metrics = {m: r[m].get("fitness_metric") for m in METHODS}
        if len(set(metrics.values())) != 1:
            raise SystemExit(f"{inst.name}: the two searches measured other fitnesses "
                             f"({', '.join(f'{m}: {k}' for m, k in metrics.items())})")  # fmt: skip
        row["uniform_fitness"] = r["full"]["baseline_fitness"]
        row["same_genome"] = r["full"]["best_genome"] == r["cheap"]["best_genome"]
        rows.append(row)
    return {"rows": rows, "tie": a.tie, "meta": run_meta(a)}


def markdown(result: dict, a: argparse.Namespace) -> str:
    def ms(d: dict) -> str:
        return f"{d['mean']:.2f} ± {d['std']:.2f}"

    lines = [
        f"Model {a.model}, choices {a.choices}, fitness: Fréchet distance of {a.num_samples} samples to the "
        f"test set (CFG 1.5); held-out: seeds {a.heldout_seeds}, {a.heldout_samples} samples each. "
        f"Tie: within {a.tie:.0%} of the full search's value. {result['meta']['machine']}, "
        f"{a.threads} thread(s), {result['meta']['date']}.",
        "",
        "| instance | fitness (search seed): full / cheap / uniform | held-out FD to data: full | cheap | uniform "
        "| cheap vs full (W/T/L) | beats uniform: full, cheap | held-out FD to float model: full | cheap | uniform "
        "| cheap vs full (W/T/L) | images sampled: full / cheap |",
        "|" + "---|" * 12,
    ]
    totals = {"data": [0, 0, 0], "fp": [0, 0, 0]}
    for r in result["rows"]:
        cells = [
            r["label"] + (", fake quantization" if r.get("kernel", "fake") == "fake" else ", integer kernel"),
            f"{r['full']['fitness']:.2f} / {r['cheap']['fitness']:.2f} / {r['uniform_fitness']:.2f}",
        ]
        for key in ("data", "fp"):
            d = r[key]
            v = d["cheap_vs_full"]
            totals[key] = [x + y for x, y in zip(totals[key], (v["wins"], v["ties"], v["losses"]))]
            cells += [
                ms(d["full"]),
                ms(d["cheap"]),
                ms(d["uniform"]),
                f"{v['wins']}/{v['ties']}/{v['losses']}",
            ]
            if key == "data":
                n = len(d["full"]["values"])
                cells.append(f"{d['full_beats_uniform']}/{n}, {d['cheap_beats_uniform']}/{n}")
        cells.append(f"{r['full']['images_sampled']} / {r['cheap']['images_sampled']}")
        lines.append("| " + " | ".join(cells) + " |")
    td, tf = totals["data"], totals["fp"]
    lines += [
        "",
        f"Over {len(result['rows'])} instance(s), cheap vs full on held-out seeds: FD to data {td[0]} wins, "
        f"{td[1]} ties, {td[2]} losses; FD to the float model {tf[0]} wins, {tf[1]} ties, {tf[2]} losses.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", default=DEFAULT_INSTANCES)
    p.add_argument("--model", default="embedded")
    p.add_argument("--choices", default="width", help="qdit search --choices (width: the paper's sizes leave "
                   "a single legal genome on the embedded model)")  # fmt: skip
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--heldout-seeds", default="101,102,103,104")
    p.add_argument("--heldout-samples", type=int, default=256)
    p.add_argument(
        "--tie", type=float, default=0.01, help="relative difference counted as a tie (default 0.01)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--search-args", default="", help="extra qdit search flags for both searches")
    p.add_argument("--only", choices=("run", "table", "verify"), default=None, help="only run the searches, "
                   "only build the table from the finished ones, or only replay the finished searches from "
                   "their saved states and check they give the committed results")  # fmt: skip
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results" / "search_compare"))
    p.add_argument("--update-benchmarks", nargs="?", const=str(ROOT / "BENCHMARKS.md"), default=None, metavar="MD",
                   help=f"also put the table into MD (default BENCHMARKS.md), between {TABLE.begin} and {TABLE.end}")  # fmt: skip
    a = p.parse_args(argv)
    try:
        instances = [Instance.parse(t) for t in a.instances.split(",") if t.strip()]
    except ValueError as e:
        p.error(f"--instances: {e}")
    if not instances:
        p.error("--instances: give at least one instance")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    if a.only == "verify":
        lines = verify(instances, a)
        print("\n".join(lines) if lines else "no finished search to replay")
        return 0
    benchmarks = Path(a.update_benchmarks) if a.update_benchmarks else None
    if benchmarks is not None and not TABLE.in_doc(benchmarks.read_text() if benchmarks.is_file() else ""):
        print(f"search_compare.py: {benchmarks} has no {TABLE.begin} ... {TABLE.end} block to put the table in",
              file=sys.stderr)  # fmt: skip
        return 2
    if a.only != "table":
        run(instances, a)
    result = compare(instances, a)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, a)
    (out / "compare.md").write_text(text)
    error = TABLE.write(benchmarks, text) if benchmarks is not None else None
    if error:
        print(f"search_compare.py: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
