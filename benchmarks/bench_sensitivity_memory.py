"""Peak memory of the search's sensitivity pass on the embedded video model: one graph over all
sampling steps against one step's graph at a time (``FitnessConfig.backward``).

Each mode runs in its own process (peak resident memory is per process): the objective of a W4A8 cheap
search (width choices, fitness against the float model's samples), the fitness of the uniform genome,
then one sensitivity pass; the process reports its peak RSS before and after the pass and the pass's
seconds. The two tables of predicted changes are compared.

    python benchmarks/bench_sensitivity_memory.py [--samples 4] [--batch-size 4] [--steps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(mode: str, samples: int, batch: int, steps: int, out: Path) -> None:
    import resource
    import time

    import torch

    from qdit.eval.features import video_feature_space
    from qdit.models.embedded import load_embedded_video
    from qdit.recipe import QuantSpec
    from qdit.search.cost import CostModel, baseline_group, default_budget
    from qdit.search.fitness import FitnessConfig, ModelObjective
    from qdit.search.recipes import searchable_layers
    from qdit.search.space import build_space

    torch.set_num_threads(1)
    model = load_embedded_video()
    base = QuantSpec(w_bits=4, a_bits=8, w_group=0, a_group=0)
    space = build_space(searchable_layers(model, base), 4, 8)
    cost = CostModel()
    g0 = baseline_group(space, cost, default_budget(space, cost))
    base = QuantSpec(w_bits=4, a_bits=8, w_group=g0, a_group=g0)
    fit = FitnessConfig(steps=steps, batch_size=batch, reference="fp", backward=mode, kernel="fake")  # as measured
    obj = ModelObjective.build(model, space, base, video_feature_space(None), fit, with_proxy=False)
    genome = space.uniform(g0)
    ev = obj.fitness(genome, samples)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    sens = obj.sensitivity(genome, samples, ev.features)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.write_text(json.dumps({"peak_before_bytes": before, "peak_after_bytes": after, "seconds": seconds,
                               "table": [{str(k): v for k, v in row.items()} for row in sens.table]}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default=None)
    p.add_argument("--_mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._mode:
        measure(a._mode, a.samples, a.batch_size, a.steps, Path(a._out))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("graph", "steps"):
            out = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, __file__, "--samples", str(a.samples), "--batch-size", str(a.batch_size),
                   "--steps", str(a.steps), "--_mode", mode, "--_out", str(out)]
            subprocess.run(cmd, check=True)
            results[mode] = json.loads(out.read_text())
    g, s = results["graph"], results["steps"]
    diffs = [abs(float(rs[c]) - float(rg[c])) for rg, rs in zip(g["table"], s["table"]) for c in rg]
    scale = max(abs(float(v)) for row in g["table"] for v in row.values())
    print(f"embedded-video, {a.samples} clips, batch {a.batch_size}, {a.steps} DDIM steps, 1 thread")
    print("| backward | peak RSS before the pass | peak RSS after | seconds |\n|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['peak_before_bytes'] / 2**30:.2f} GiB | {r['peak_after_bytes'] / 2**30:.2f} GiB | {r['seconds']:.0f} |")
    print(f"largest difference between the two tables: {max(diffs):.2e} (largest entry {scale:.2e})")
    if a.json:
        summary = {"samples": a.samples, "batch_size": a.batch_size, "steps": a.steps,
                   "modes": {m: {k: v for k, v in r.items() if k != "table"} for m, r in results.items()},
                   "max_table_difference": max(diffs), "max_table_entry": scale}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
