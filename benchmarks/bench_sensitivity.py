"""How well the first-order sensitivity predicts single-gene changes of the fitness.

At one genome (default: the uniform baseline), one sensitivity pass predicts the fitness change of
every single-gene change; each of those genomes is then measured. Writes a table row for
BENCHMARKS.md (``benchmarks/sensitivity_results.md``), a scatter plot of predicted against measured
changes (``benchmarks/sensitivity_plot.png``) and everything in ``benchmarks/out/sensitivity.json``.

    .venv/bin/python benchmarks/bench_sensitivity.py [--steps 10 --num-samples 64 --threads 2]

``--replot`` only redraws the plot from ``<out-dir>/sensitivity.json``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def draw_plot(rows: list[dict], corr: float):  # -> PIL.Image.Image
    """Predicted against measured fitness changes, with the diagonal, from the rows this script writes."""

    from qdit.search.plot import PALETTE, Series, line_plot

    pred = [float(r["predicted"]) for r in rows]
    meas = [float(r["measured"]) for r in rows]
    lo, hi = min(pred + meas), max(pred + meas)
    return line_plot(
        [
            Series("y = x", [lo, hi], [lo, hi], PALETTE[1]),
            Series("single-gene changes", meas, pred, PALETTE[0], style="points"),
        ],
        title=f"first-order sensitivity vs measured change (corr {corr:.3f})",
        xlabel="measured fitness change",
        ylabel="predicted fitness change",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--out-dir", default=str(HERE / "out"))
    p.add_argument("--results", default=str(HERE / "sensitivity_results.md"))
    p.add_argument("--plot", default=str(HERE / "sensitivity_plot.png"))
    p.add_argument("--replot", action="store_true", help="only redraw --plot from <out-dir>/sensitivity.json")
    args = p.parse_args(argv)
    if args.replot:
        import json

        saved = json.loads((Path(args.out_dir) / "sensitivity.json").read_text())
        draw_plot(saved["rows"], saved["correlation"]).save(args.plot)
        return 0

    import numpy as np
    import torch
    from search_setup import w4a8_search_setup
    from tqdm import tqdm

    from qdit.io.atomic import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = w4a8_search_setup(args.model, args.steps, args.seed)
    space, g0, obj = setup.space, setup.baseline_group, setup.objective
    n = args.num_samples
    genome = space.uniform(g0)
    t0 = time.perf_counter()
    here = obj.fitness(genome, n)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    sens = obj.sensitivity(genome, n, here.features)
    t_sens = time.perf_counter() - t0
    rows = []
    changes = [(i, c) for i, gene in enumerate(space.genes) for c in gene.choices if c != genome[i]]
    for i, c in tqdm(changes, desc="single-gene changes", unit="eval"):
        changed = genome[:i] + (c,) + genome[i + 1 :]
        measured = obj.fitness(changed, n).value - here.value
        rows.append(
            {"gene": space.genes[i].layer, "choice": c, "predicted": sens.table[i][c], "measured": measured}
        )
    pred = np.array([r["predicted"] for r in rows])
    meas = np.array([r["measured"] for r in rows])
    corr = float(np.corrcoef(pred, meas)[0, 1])
    rmse = float(np.sqrt(np.mean((pred - meas) ** 2)))
    sign = float(np.mean(np.sign(pred) == np.sign(meas)))
    host = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    table = (
        f"Single-gene changes of the uniform group-{g0} genome, W4A8, {args.steps} DDIM steps, {n} samples, "
        f"seed {args.seed}; host: {host}.\n\n"
        "| changes | correlation | RMSE | spread of the measured changes (std) | same sign | "
        "sensitivity pass (s) | one evaluation (s) |\n|---|---|---|---|---|---|---|\n"
        f"| {len(rows)} | {corr:.3f} | {rmse:.2f} | {meas.std():.2f} | {sign:.0%} | {t_sens:.1f} | {t_eval:.1f} |\n"
    )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "sensitivity.json",
        {"rows": rows, "correlation": corr, "rmse": rmse, "same_sign": sign, "fitness": here.value,
         "seconds_sensitivity": t_sens, "seconds_evaluation": t_eval, "host": host},
    )  # fmt: skip
    Path(args.results).write_text(table)
    draw_plot(rows, corr).save(args.plot)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
