"""What the search's candidates cost on each kernel: one fitness evaluation on fake quantization and on
the AMX integer kernel (``qdit search --kernel fake`` / ``auto``), same candidates, same samples.

The search's setting on the embedded model (W4A8, width-derived group sizes, domain Fréchet distance of
``--num-samples`` samples, DDIM ``--steps`` steps, CFG 1.5, seed 0): for uniform group 128 and
``--candidates - 1`` random candidates, the two kernels are timed in turn (interleaved, so that a change of
the host's load touches both, each first for half the candidates; each candidate is run once untimed first, so that the integer kernel's
one-off preparation of each weight variant is left out), and their fitness values compared. Reported: seconds per evaluation on
each kernel (best and median over the candidates), the ratio, and the relative fitness difference per
candidate (the integer kernel's roundings differ from fake quantization's by float rounding per layer,
which now and then moves an activation across a rounding boundary). The host probe of ``qdit bench`` is
recorded before and after, so that a run on a busy host can be recognised.

Usage::

    python benchmarks/bench_search_kernel.py [--steps 10] [--num-samples 64] [--candidates 4] [--threads 1]
        [--json benchmarks/results/bench_search_kernel.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import run_meta

from qdit.commands.bench import host_probe_ms
from qdit.io.atomic import write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.candidates < 1 or a.num_samples < 2 or a.steps < 1:
        p.error("--candidates and --steps must be >= 1, --num-samples >= 2")
    torch.set_num_threads(a.threads)

    from qdit.api import load_model
    from qdit.eval.features import domain_feature_space
    from qdit.kernels.cpu import cpu_extension
    from qdit.recipe import QuantSpec
    from qdit.search.fitness import SEARCH_KERNELS, FitnessConfig, ModelObjective
    from qdit.search.recipes import searchable_layers
    from qdit.search.space import CandidateRule, build_space

    if cpu_extension() is None:
        print("bench_search_kernel.py: error: the AMX extension is not built here (make setup)", file=sys.stderr)
        return 2
    model = load_model(a.model)
    space = build_space(searchable_layers(model, QuantSpec(w_bits=4, a_bits=8, w_group=0, a_group=0)), 4, 8,
                        rule=CandidateRule())  # fmt: skip
    base = QuantSpec(w_bits=4, a_bits=8, w_group=128, a_group=128)
    features = domain_feature_space()
    objectives = {
        k: ModelObjective.build(model, space, base, features, FitnessConfig(steps=a.steps, seed=0, kernel=k),
                                model_name=a.model, with_proxy=False, keep_float=False)  # fmt: skip
        for k in SEARCH_KERNELS
    }
    rng = np.random.default_rng(0)
    genomes = [space.uniform(128)] + [space.random(rng) for _ in range(a.candidates - 1)]
    for g in genomes:  # untimed: the integer kernel prepares each variant's layout on first use
        for obj in objectives.values():
            obj.fitness(g, 2)
    probe_before = host_probe_ms()
    rows = []
    for i, g in enumerate(genomes):
        row: dict = {"genome": list(g)}
        order = SEARCH_KERNELS if i % 2 == 0 else SEARCH_KERNELS[::-1]  # each kernel first half the time
        for k in order:
            obj = objectives[k]
            t0 = time.perf_counter()
            value = obj.fitness(g, a.num_samples).value
            row[k] = {"seconds": time.perf_counter() - t0, "fitness": value}
        row["fitness_rel_diff"] = abs(row["auto"]["fitness"] - row["fake"]["fitness"]) / abs(row["fake"]["fitness"])
        rows.append(row)
        print(f"candidate {i}: fake {row['fake']['seconds']:.2f} s, auto {row['auto']['seconds']:.2f} s, "
              f"fitness {row['fake']['fitness']:.3f} vs {row['auto']['fitness']:.3f}", flush=True)  # fmt: skip
    probe_after = host_probe_ms()
    from qdit.nn import kernel_paths

    on_amx = {k: sum(p == "amx" for p in kernel_paths(obj.model).values()) for k, obj in objectives.items()}
    summary = {}
    for k in SEARCH_KERNELS:
        times = [r[k]["seconds"] for r in rows]
        summary[k] = {"best_s": min(times), "median_s": statistics.median(times)}
    summary["speedup_median"] = summary["fake"]["median_s"] / summary["auto"]["median_s"]
    summary["speedup_best"] = summary["fake"]["best_s"] / summary["auto"]["best_s"]
    summary["fitness_rel_diff_max"] = max(r["fitness_rel_diff"] for r in rows)
    summary["layers_on_amx"] = on_amx  # at the last candidate
    result = {"rows": rows, "summary": summary, "host_probe_ms": {"before": probe_before, "after": probe_after},
              "meta": run_meta(a)}  # fmt: skip
    print(
        f"\n{a.model}, W4A8, {a.num_samples} samples x {a.steps} DDIM steps per evaluation, {a.threads} thread(s), "
        f"{len(rows)} candidates; host probe {probe_before:.2f} / {probe_after:.2f} ms; layers on AMX: "
        f"{on_amx['auto']} (auto), {on_amx['fake']} (fake)\n"
        "| kernel | s per evaluation (median) | best |\n|---|---|---|\n"
        + "".join(f"| {k} | {summary[k]['median_s']:.2f} | {summary[k]['best_s']:.2f} |\n" for k in SEARCH_KERNELS)
        + f"\nauto vs fake: {summary['speedup_median']:.2f}x (median), {summary['speedup_best']:.2f}x (best); "
        f"fitness differs by at most {summary['fitness_rel_diff_max']:.2%}"
    )
    if a.json:
        write_json(Path(a.json), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
