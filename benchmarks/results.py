"""The results table of issue 12: every baseline and every Q-DiT step at several bit-widths.

Rows, for each setting (``W8A8``, ``W6A8``, ``W4A8``; ``--hard`` adds ``W4A6``, ``W3A8``, ``W4A4``):

* ``fp``: full precision (once; the reference row of every setting);
* ``rtn``: per-channel RTN weights, static per-tensor activations (the paper's RTN row);
* ``smoothquant``: SmoothQuant balancing (alpha 0.5), per-channel RTN, static per-tensor activations;
* ``gptq``: GPTQ weights (per channel), dynamic per-token activations;
* ``ptq4dit``: PTQ4DiT-style channel-wise salience balancing (``--balance csb``), per-channel RTN, static
  per-tensor activations (no block reconstruction: see ``qdit.quant.balance``);
* ``qdit_g128``: Q-DiT step 1, group 128 for weights and activations, static activations;
* ``qdit_dynamic``: step 2, + dynamic per-token activations (Q-DiT without search);
* ``qdit_gptq``: step 2 with GPTQ weights instead of RTN (Q-DiT's optional second-order weight rounding,
  per layer at its own group size; still no search);
* ``qdit_full``: step 3, + the paper's evolutionary search of per-layer group sizes (``qdit search
  --method full`` with ``--full-search-args``, by default :data:`SEARCH_FLAGS`: 10 DDIM steps, the
  domain Frechet distance to the float model's samples as fitness, width-derived group sizes);
* ``qdit_cheap``: + qdit's cheap search instead (``qdit search --method cheap``, ``--cheap-search-args``);
* ``qdit_full_gptq``, ``qdit_cheap_gptq``: the same searched recipes quantized with GPTQ weights (the
  search itself scores RTN weights: GPTQ for every candidate would cost more than the search).

Every model is sampled with DDIM (``--steps``, default 50), guidance 1.5, for each seed (the same noise
and labels across rows), and scored against the Fashion-MNIST test set: Inception FID, sFID, precision,
recall, plus the domain Fréchet distance and class accuracy. Rows in ``--key-rows`` get every seed of
``--seeds`` (mean ± std), the others the first seed. For each quantized row, "RTN's loss recovered" is
``(M_rtn - M_row) / (M_rtn - M_fp)`` of the first metric (FID, or domain FD without Inception metrics).

    python benchmarks/results.py [--quick] [--hard] [--num 1000] [--steps 50] [--seeds 0,1,2]
        [--rows fp,rtn,...] [--settings W8A8,W6A8,W4A8] [--out-dir benchmarks/results] [--threads 2]

Writes ``<out-dir>/<setting>.json`` (e.g. ``w4a8.json``; ``fp.json`` for full precision), each updated
after every row under a lock (two runs on other rows of one setting, one per core, keep each other's
rows), so a rerun skips the rows already there (``--force`` redoes them); quantized folders,
searched recipes and samples go to ``<out-dir>/work/`` and are reused too; the searched recipes are
also kept in ``<out-dir>/recipes/`` (committed: a clone quantizes the search rows without searching;
delete one to search again). Then ``results.md`` (the
table, the machine, the date, torch's version), ``fid_vs_bpw.png`` and ``grid.png`` (the same seed's
first images in every row of the grid setting). Every step is a ``qdit`` command (printed), so each can
be rerun alone. ``--quick``: 100 samples, 10 steps, one seed, W4A8 only, no searches, domain metrics only.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from bench_common import (
    Block,
    check_weights,
    cpu_name,
    drawn_with,
    git_commit,
    run_meta,
    sample_once,
    weights_digest,
)

from qdit.io.atomic import atomic_write, write_json

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("W8A8", "W6A8", "W4A8")
HARD_SETTINGS = ("W4A6", "W3A8", "W4A4")
ROWS: dict[str, tuple[str, list[str]]] = {  # key -> (label, qdit quantize flags); search rows add --recipe
    "rtn": ("RTN (per-channel, static act.)", ["--baseline", "rtn"]),
    "smoothquant": ("SmoothQuant (alpha 0.5, static act.)", ["--baseline", "smoothquant"]),
    "gptq": ("GPTQ + per-token act.", ["--baseline", "gptq"]),
    "ptq4dit": ("PTQ4DiT-style CSB (static act.)", ["--baseline", "ptq4dit"]),
    "qdit_g128": ("Q-DiT: group 128 (static act.)", ["--group-size", "128", "--act-granularity", "static"]),
    "qdit_dynamic": ("Q-DiT: + dynamic act. (token)", ["--group-size", "128", "--act-granularity", "token"]),
    "qdit_gptq": (
        "Q-DiT: + GPTQ weights",
        ["--group-size", "128", "--act-granularity", "token", "--weight-method", "gptq"],
    ),
    "qdit_full": ("Q-DiT: + full search", []),
    "qdit_cheap": ("Q-DiT: + cheap search", []),
    "qdit_full_gptq": ("Q-DiT: + full search + GPTQ weights", ["--weight-method", "gptq"]),
    "qdit_cheap_gptq": ("Q-DiT: + cheap search + GPTQ weights", ["--weight-method", "gptq"]),
}
# search rows -> the search method; the *_gptq rows reuse that method's searched recipe
SEARCH_ROWS = {
    "qdit_full": "full",
    "qdit_cheap": "cheap",
    "qdit_full_gptq": "full",
    "qdit_cheap_gptq": "cheap",
}
ALL_ROWS = ("fp", *ROWS)
QUICK_ROWS = ("fp", "rtn", "smoothquant", "gptq", "ptq4dit", "qdit_g128", "qdit_dynamic", "qdit_gptq")
FULL_METRICS = ("fid", "sfid", "precision", "recall", "domain_fd", "class_acc")
QUICK_METRICS = ("domain_fd", "class_acc")
# The searches' flags by default: candidates scored after 10 DDIM steps (the table samples 50) by the
# Frechet distance to the float model's samples drawn with the same noise (fidelity; the paper scores
# against the data, which a 64-sample distance lets a recipe game by moving the images, see
# BENCHMARKS.md); group sizes derived from the layer widths (the paper's sizes leave a single legal
# genome on the embedded model)
SEARCH_FLAGS = "--steps 10 --choices width --fitness fd-fp"
LOWER_IS_BETTER = {"fid", "sfid", "domain_fd"}
# issue 12's acceptance: the best searched Q-DiT row within these ratios of full precision ...
TARGETS = {"W4A8": 1.10, "W6A8": 1.02}
# ... and, at the hardest setting where RTN costs at least RTN_HARD x full precision, that row
# recovers at least RECOVERY_TARGET of RTN's loss
RTN_HARD, RECOVERY_TARGET = 2.0, 0.90
# Q-DiT's ablation: (step, the step it adds to); the steps should improve monotonically, or the table
# says where they do not (issue 12)
ABLATION = (
    ("qdit_dynamic", "qdit_g128"),
    ("qdit_full", "qdit_dynamic"),
    ("qdit_cheap", "qdit_dynamic"),
    ("qdit_gptq", "qdit_dynamic"),
    ("qdit_full_gptq", "qdit_full"),
    ("qdit_cheap_gptq", "qdit_cheap"),
)


def qdit(*args: str) -> None:
    print("$ qdit", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "qdit", *args], check=True)


TABLE = Block("results.py table")  # the region of BENCHMARKS.md this script writes


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def parse_setting(setting: str) -> tuple[int, int]:
    s = setting.upper()
    if not (s.startswith("W") and "A" in s):
        raise SystemExit(f"results.py: a setting is like W4A8, got {setting!r}")
    w, a = s[1:].split("A", 1)
    return int(w), int(a)


def recovered(rtn: float | None, fp: float | None, value: float | None) -> float | None:
    """The fraction of RTN's loss (against full precision) a method recovers: 1 = all of it, 0 = none,
    negative = worse than RTN; ``None`` when a number is missing or RTN lost nothing."""
    if rtn is None or fp is None or value is None or rtn == fp:
        return None
    return (rtn - value) / (rtn - fp)


def bits_per_weight(summary: dict) -> float | None:
    """Bits per weight of the quantized layers (codes, scales and zero points) from a quantize summary."""
    packed, bf16 = summary.get("quantized_layers_mb_packed"), summary.get("quantized_layers_mb_bf16")
    return 16.0 * packed / bf16 if packed and bf16 else None


def psnr(npz: Path, ref: Path) -> float | None:
    """PSNR (dB) of the images in ``npz`` against those in ``ref`` drawn from the same noise and labels
    (full precision's samples of the same seed); None when either file is missing, they do not pair up,
    or they are identical."""
    if not (npz.is_file() and ref.is_file()):
        return None
    with np.load(npz) as f, np.load(ref) as g:
        a, b = f["arr_0"], g["arr_0"]
        if a.shape != b.shape or not np.array_equal(f["labels"], g["labels"]):
            return None
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def aggregate(row: dict, metric: str) -> None:
    """``row[metric]`` (mean over its seeds) and ``row[metric + '_std']`` (None for one seed) from ``per_seed``."""
    vals = [r[metric] for r in row["per_seed"] if r.get(metric) is not None]
    row[metric] = float(np.mean(vals)) if vals else None
    row[f"{metric}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def model_name(key: str, w_bits: int, a_bits: int) -> str:
    """The name of a quantized row's model folder, and the prefix of its samples in ``work/``."""
    return f"w{w_bits}a{a_bits}_{key}"


def sample_name(row: dict) -> str:
    return "fp" if row["row"] == "fp" else model_name(row["row"], row["w_bits"], row["a_bits"])


def samples_of(work: Path, name: str, seed: int, scores: dict) -> Path | None:
    """``work``'s samples of ``name`` and ``seed`` if they are the ones ``scores`` (a row's values for
    that seed) were measured on: the scores cached beside them are ``scores``, and the samples were not
    drawn again since (their stamp's config is the cached scores' one); else None."""
    npz = work / f"{name}_s{seed}.npz"
    cached = read_json(work / f"{name}_s{seed}.metrics.json")
    values = cached.get("values", {})
    if not npz.is_file() or not values or any(values.get(k) != v for k, v in scores.items() if k in values):
        return None
    scored = {k: v for k, v in cached.get("config", {}).items() if k not in ("metrics", "inception")}
    stamped = npz.with_suffix(".sample.json").is_file()  # samples from before the stamps have none
    return npz if not stamped or drawn_with(npz) == scored else None


def add_psnr(row: dict, fp_row: dict | None, work: Path) -> bool:
    """Each seed's PSNR against full precision's samples of that seed (``psnr_fp``: how far the
    quantized model's images move, free of the seed noise of FID), for the seeds that have none yet and
    whose samples, and full precision's, are in ``work`` as they were scored (:func:`samples_of`); True
    when something was added."""
    if row["row"] == "fp" or fp_row is None:
        return False
    fp_scores = dict(zip(fp_row["seeds"], fp_row["per_seed"], strict=True))
    added = False
    for seed, values in zip(row["seeds"], row["per_seed"], strict=True):
        if values.get("psnr_fp") is not None or seed not in fp_scores:
            continue
        mine = samples_of(work, sample_name(row), seed, {k: v for k, v in values.items() if k != "psnr_fp"})
        ref = samples_of(work, "fp", seed, {k: v for k, v in fp_scores[seed].items() if k != "psnr_fp"})
        value = psnr(mine, ref) if mine is not None and ref is not None else None
        if value is not None:
            values["psnr_fp"], added = value, True
    aggregate(row, "psnr_fp")
    return added


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while a setting's JSON is read, changed
    and written back, so that two runs on rows of one setting (one per core) keep each other's rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_of(path: Path) -> Path:
    """The lock file of a setting's JSON (in ``work/`` beside it, which git ignores)."""
    return path.parent / "work" / f"{path.name}.lock"


def rows_of(path: Path, config: dict) -> dict[str, dict]:
    """The rows of ``config`` in the JSON at ``path`` as it is now, by key (read under its lock)."""
    return {r["row"]: r for r in read_json(path).get("rows", []) if r.get("config") == config}


def store_row(path: Path, row: dict, config: dict, meta: dict) -> dict[str, dict]:
    """Put ``row`` into the setting's JSON at ``path`` as the file is now (rows written by another run
    since this one read it stay), in table order, rows of other configurations after them as they are;
    returns the file's rows of ``config`` by key."""
    with locked(lock_of(path)):
        rows = read_json(path).get("rows", [])
        mine = {r["row"]: r for r in rows if r.get("config") == config}
        mine[row["row"]] = row
        others = [r for r in rows if r.get("config") != config]
        write_json(path, {"rows": [*(mine[k] for k in ALL_ROWS if k in mine), *others], "meta": meta})
    return mine


def normalise_flags(tokens: list[str]) -> list[str]:
    """Command-line flags in one spelling: each flag with the values after it, ``--x=y`` as ``--x y``,
    the flags sorted (so the same search gets the same name whatever the order it was given in)."""
    groups: list[list[str]] = []
    for token in tokens:
        if token.startswith("--") or not groups:
            groups.append(token.split("=", 1) if token.startswith("--") else [token])
        else:
            groups[-1].append(token)
    return [t for g in sorted(groups) for t in g]


class Runner:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.out = Path(a.out_dir)
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = {"model": a.model, "num": a.num, "steps": a.steps, "cfg": 1.5,
                       "metrics": list(a.metrics), "calib_samples": a.calib_samples,
                       "calib_steps": a.calib_steps}  # fmt: skip
        if a.bf16:  # bf16 Inception features give other FIDs: never reuse fp32 numbers for them (or back)
            self.config["inception"] = "bf16"
        self.fp_row: dict | None = None  # full precision's row of this config, once run() has it
        self.weights = weights_digest(a.model)  # names the kept recipes
        # the code and the host this run started on (HEAD may move while it runs for hours)
        self.started = {"commit": git_commit(), "cpu": cpu_name()}

    def meta(self) -> dict:
        return run_meta(self.a, **self.started)

    # --- one row -------------------------------------------------------------------------------
    def sample_and_score(self, model: str, name: str, seed: int, config: dict) -> dict[str, float]:
        """Sample and score one seed; reuses the cached scores made with the same ``config``."""
        a = self.a
        npz = self.work / f"{name}_s{seed}.npz"
        metrics_path = self.work / f"{name}_s{seed}.metrics.json"
        cached = read_json(metrics_path)
        if cached.get("config") == config and npz.is_file():
            return cached["values"]
        # the samples depend on the model and the sampler only, not on how they are scored
        drawn_with = {k: v for k, v in config.items() if k not in ("metrics", "inception")}
        seconds = sample_once(npz, drawn_with, lambda: qdit(
            "sample", "--model", model, "--num", str(a.num), "--steps", str(a.steps), "--cfg", "1.5",
            "--seed", str(seed), "--batch-size", str(a.batch_size), "--out", str(npz)))  # fmt: skip
        tmp = self.work / f"{name}_s{seed}.eval.json"
        extra = ["--bf16"] if a.bf16 else []
        qdit("eval", str(npz), "--ref", "fashion-mnist-test", "--metrics", ",".join(a.metrics),
             "--no-progress", *extra, "--json", str(tmp))  # fmt: skip
        values = {k: float(v) for k, v in read_json(tmp)["metrics"].items() if k in a.metrics}
        values["sample_seconds"] = round(seconds, 2)
        write_json(metrics_path, {"config": config, "values": values})
        return values

    def search_args(self, method: str) -> list[str]:
        """``qdit search``'s flags beyond the model and the bits: the method, the steps of the table
        (unless the method's extra flags give their own) and those extra flags, in one spelling (each
        flag with its values, ``--x=y`` as ``--x y``, sorted), so that the same search is named alike."""
        extra = normalise_flags((self.a.full_search_args if method == "full" else self.a.cheap_search_args).split())
        steps = [] if "--steps" in extra else ["--steps", str(self.a.steps)]
        return ["--method", method, *normalise_flags([*extra, *steps])]

    def kept_recipe(self, searched: str) -> Path | None:
        """Where a searched recipe is kept beside the JSON (``<out-dir>/recipes/``, committed), named
        with the model's weights so that a retrained model never takes an old recipe: a fresh clone or
        another machine quantizes the rows from it instead of searching again (an hour on a CPU without
        AMX); None for a model whose weights are not files here."""
        if self.weights is None:
            return None
        return self.out / "recipes" / f"{searched}_{self.weights[:12]}.recipe.json"

    def quantized_model(self, key: str, w_bits: int, a_bits: int) -> tuple[str, dict]:
        a = self.a
        name = model_name(key, w_bits, a_bits)
        folder = self.work / name
        summary_path = self.work / f"{name}.quantize.json"
        flags = list(ROWS[key][1])
        config = self.config
        if key in SEARCH_ROWS:
            method = SEARCH_ROWS[key]
            extra = self.search_args(method)
            # one search per model, method, setting and flags: others search again (the weights behind
            # the model's name are checked for the whole folder: check_weights)
            digest = hashlib.sha256(" ".join([a.model, *extra]).encode()).hexdigest()[:8]
            searched = f"w{w_bits}a{a_bits}_qdit_{method}_{digest}"
            recipe = self.work / f"{searched}.recipe.json"
            kept = self.kept_recipe(searched)
            # one search at a time per recipe: the other row of a search (+ GPTQ weights) run by
            # another process waits for it rather than running it again on the same state file
            with locked(self.work / f"{searched}.lock"):
                if not recipe.is_file() and kept is not None and kept.is_file():
                    print(f"== {searched}: the recipe searched before ({kept.relative_to(self.out)})", flush=True)
                    atomic_write(recipe, lambda tmp: shutil.copyfile(kept, tmp))
                if not recipe.is_file():
                    state = self.work / f"{searched}.recipe.state.json"
                    resume = ["--resume"] if state.is_file() else []
                    qdit("search", "--model", a.model, "--w-bits", str(w_bits), "--a-bits", str(a_bits),
                         *extra, "--no-progress",
                         "--state", str(state), *resume, "--out", str(recipe))  # fmt: skip
                if kept is not None and (not kept.is_file() or kept.read_bytes() != recipe.read_bytes()):
                    if kept.is_file():
                        print(f"== {searched}: {kept.relative_to(self.out)} replaced by the recipe in work/, "
                              "which these rows use", flush=True)  # fmt: skip
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(kept, lambda tmp: shutil.copyfile(recipe, tmp))
            flags = ["--recipe", str(recipe), *flags]
            # a searched-again recipe must not reuse the models and samples of the old one
            config = {**config, "recipe_sha256": hashlib.sha256(recipe.read_bytes()).hexdigest()}
        summary = read_json(summary_path)
        if not (folder / "qdit.json").is_file() or summary.get("config") != config:
            qdit("quantize", "--model", a.model, "--w-bits", str(w_bits), "--a-bits", str(a_bits), *flags,
                 "--calib-samples", str(a.calib_samples), "--calib-steps", str(a.calib_steps),
                 "--out", str(folder), "--json", str(summary_path))  # fmt: skip
            summary = {**read_json(summary_path), "config": config}
            write_json(summary_path, summary)
        return str(folder), summary

    def row(self, key: str, setting: str | None) -> dict:
        a = self.a
        seeds = a.seeds if key in a.key_rows else a.seeds[:1]
        t0 = time.perf_counter()
        if setting is None:
            model, summary, name = a.model, {}, "fp"
            w_bits = a_bits = None
        else:
            w_bits, a_bits = parse_setting(setting)
            model, summary = self.quantized_model(key, w_bits, a_bits)
            name = Path(model).name
        config = summary.get("config", self.config)  # a search row's includes its recipe
        per_seed = [self.sample_and_score(model, name, s, config) for s in seeds]
        row: dict = {"row": key, "label": "full precision" if key == "fp" else ROWS[key][0],
                     "setting": setting or "FP", "w_bits": w_bits, "a_bits": a_bits, "seeds": seeds,
                     "per_seed": per_seed, "bits_per_weight": bits_per_weight(summary) if summary else 16.0,
                     "config": self.config}  # fmt: skip
        for m in (*a.metrics, "sample_seconds"):
            aggregate(row, m)
        add_psnr(row, self.fp_row, self.work)
        if key in SEARCH_ROWS:  # how the recipe was searched (qdit search's flags beyond the setting's)
            row["search"] = " ".join(self.search_args(SEARCH_ROWS[key]))
            row["recipe_sha256"] = config.get("recipe_sha256")  # which recipe (the kept one in recipes/)
        row["cpu"] = self.started["cpu"]  # the host of this row (a setting's meta names its last writer only)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row

    # --- the table -----------------------------------------------------------------------------
    def run(self) -> dict[str, list[dict]]:
        a = self.a
        tables: dict[str, list[dict]] = {}
        fp_path = self.out / "fp.json"
        fp_rows = [r for r in read_json(fp_path).get("rows", []) if r.get("config") == self.config]
        if "fp" in a.rows and (not fp_rows or a.force) and not a.table_only:
            print("== full precision", flush=True)
            stored = store_row(fp_path, self.row("fp", None), self.config, self.meta())
            fp_rows = [stored["fp"]]
        elif fp_rows:
            print("== full precision: done already (skipped)", flush=True)
        self.fp_row = fp_rows[0] if fp_rows else None
        for setting in a.settings:
            path = self.out / f"{setting.lower()}.json"
            lock = lock_of(path)
            with locked(lock):
                done = rows_of(path, self.config)
                if any([add_psnr(r, self.fp_row, self.work) for r in done.values()]):  # rows from before the column
                    data = read_json(path)
                    data["rows"] = [done.get(r["row"], r) if r.get("config") == self.config else r for r in data["rows"]]
                    write_json(path, data)
            for key in () if a.table_only else a.rows:
                if key == "fp":
                    continue
                with locked(lock):  # rows another run stored meanwhile are done too
                    done.update(rows_of(path, self.config))
                searched_as = " ".join(self.search_args(SEARCH_ROWS[key])) if key in SEARCH_ROWS else None
                same = normalise_flags((done[key].get("search") or "").split()) == normalise_flags((searched_as or "").split()) if key in done else False
                if key in done and not same:
                    print(f"== {setting} {key}: searched with other flags ({done[key].get('search')}): again", flush=True)
                elif key in done and not a.force:
                    print(f"== {setting} {key}: done already (skipped)", flush=True)
                    continue
                print(f"== {setting} {key}", flush=True)
                done = store_row(path, self.row(key, setting), self.config, self.meta())
            with locked(lock):  # the table has the rows another run stored after this one's last
                done.update(rows_of(path, self.config))
            tables[setting] = [*fp_rows, *(done[k] for k in ALL_ROWS if k in done)]
        return tables


def add_recovery(tables: dict[str, list[dict]], metric: str) -> None:
    for rows in tables.values():
        fp, rtn = fp_and_rtn(rows, metric)
        for r in rows:
            r["recovered"] = None if r["row"] in ("fp", "rtn") else recovered(rtn, fp, r.get(metric))
            r["recovered_metric"] = metric


def ablation(tables: dict[str, list[dict]], metric: str) -> list[str]:
    """One line per setting: each Q-DiT step against the step it adds to, on the seeds both rows have
    (the same noise and labels: paired) -- improves, does not, or within the seeds' spread (the mean
    difference no larger than the std of the per-seed differences)."""
    lower = metric in LOWER_IS_BETTER
    lines = []
    for setting, rows in tables.items():
        by = {r["row"]: r for r in rows}
        parts = []
        for step, base in ABLATION:
            s, b = by.get(step), by.get(base)
            if s is None or b is None:
                continue
            sv = {seed: v.get(metric) for seed, v in zip(s["seeds"], s["per_seed"], strict=True)}
            bv = {seed: v.get(metric) for seed, v in zip(b["seeds"], b["per_seed"], strict=True)}
            common = [k for k in sv if k in bv and sv[k] is not None and bv[k] is not None]
            if not common:
                continue
            diffs = [sv[k] - bv[k] for k in common]
            diff = float(np.mean(diffs))
            spread = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
            if len(common) == 1:
                verdict = "one seed only, not a verdict"
            elif spread > 0 and abs(diff) <= spread:
                verdict = "within the seeds' spread"
            else:
                verdict = "improves" if (diff < 0 if lower else diff > 0) else "does not improve"
            seeds = f"one seed, difference {diff:+.2f}" if len(common) == 1 else f"{len(common)} seeds, difference {diff:+.2f} ± {spread:.2f}"
            parts.append(
                f"{ROWS[step][0].removeprefix('Q-DiT: ')} over {ROWS[base][0].removeprefix('Q-DiT: ')}: "
                f"{np.mean([bv[k] for k in common]):.2f} -> {np.mean([sv[k] for k in common]):.2f}, "
                f"{verdict} ({seeds})"
            )
        if parts:
            lines.append(f"- {setting}: " + "; ".join(parts))
    return lines


def fp_and_rtn(rows: list[dict], metric: str) -> tuple[float | None, float | None]:
    """Full precision's and RTN's ``metric`` among one setting's rows (None where a row is missing)."""
    by = {r["row"]: r for r in rows}
    return by.get("fp", {}).get(metric), by.get("rtn", {}).get(metric)


def seeds_of(row: dict) -> str:
    n = len(row["seeds"])
    return f"{n} seed{'s' if n != 1 else ''}"


def acceptance(tables: dict[str, list[dict]], metric: str) -> list[str]:
    """Issue 12's targets read off the table (lower-is-better metrics only): per setting, the best
    searched Q-DiT row (lowest mean) against full precision (and :data:`TARGETS`' ratio where the setting
    has one) and against the unsearched rows' means; then, of the settings where RTN is at least
    :data:`RTN_HARD` times full precision, the hardest (RTN's largest ratio) and the share of RTN's loss
    the best searched row recovers there."""
    if metric not in LOWER_IS_BETTER:
        return []
    lines: list[str] = []
    hard: list[tuple[float, str, dict | None, float | None]] = []  # (RTN / FP, setting, best row, its recovery)
    for setting, rows in tables.items():
        fp, rtn = fp_and_rtn(rows, metric)
        if fp is None or fp <= 0:
            lines.append(f"- {setting}: no full-precision value to compare with")
            continue
        searched = [r for r in rows if r["row"] in SEARCH_ROWS and r.get(metric) is not None]
        best = min(searched, key=lambda r: r[metric]) if searched else None
        if rtn is not None and rtn >= RTN_HARD * fp:
            hard.append((rtn / fp, setting, best, None if best is None else recovered(rtn, fp, best[metric])))
        if best is None:
            lines.append(f"- {setting}: no searched Q-DiT row yet")
            continue
        ratio = round(best[metric] / fp, 3)  # the verdict is the one the printed ratio gives
        text = f"- {setting}: best searched row {best['label']} ({seeds_of(best)}) {ratio:.3f}x FP"
        if setting in TARGETS:
            text += f" ({'meets' if ratio <= TARGETS[setting] else 'misses'} <= {TARGETS[setting]:.2f}x)"
        others = [r for r in rows if r["row"] not in SEARCH_ROWS and r["row"] != "fp" and r.get(metric) is not None]
        if not others:
            text += "; no unsearched row to compare with"
        else:
            rival = min(others, key=lambda r: r[metric])
            std = rival.get(f"{metric}_std")
            spread = f" ± {std:.2f}" if std is not None else ""
            verdict = ("lower mean than" if best[metric] < rival[metric] else "not lower than")
            who = "every unsearched row" if len(others) > 1 else "the only unsearched row"
            text += (f"; {verdict} {who} (the lowest: {rival['label']}, {rival[metric]:.2f}{spread}, "
                     f"{seeds_of(rival)})")  # fmt: skip
        lines.append(text + (f"; RTN {rtn / fp:.2f}x FP" if rtn is not None else ""))
    if not hard:
        lines.append(f"- No setting measured so far has RTN at >= {RTN_HARD:g}x full precision.")
    else:
        ratio, setting, best, rec = max(hard, key=lambda h: h[0])
        lines.append(
            f"- Hardest setting with RTN >= {RTN_HARD:g}x FP: {setting} (RTN {ratio:.2f}x); "
            + ("no searched row yet" if best is None or rec is None else
               f"{best['label']} recovers {rec:.3f} of RTN's loss "
               f"({'meets' if round(rec, 3) >= RECOVERY_TARGET else 'misses'} >= {RECOVERY_TARGET:.2f})")
        )  # fmt: skip
    return lines


def fmt(r: dict, m: str) -> str:
    v, std = r.get(m), r.get(f"{m}_std")
    if v is None:
        return "—"
    digits = 3 if m in ("precision", "recall", "class_acc") else 2
    return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def measured(out: Path, settings: list[str]) -> str:
    """Where and when the tabled rows were written, from the ``meta`` of their JSON files (each file's
    last write): machine, CPU models (files from before they were recorded: "unrecorded"), CPUs,
    threads, torch, and the span of dates."""
    metas = [read_json(out / f"{name}.json").get("meta") for name in ("fp", *(s.lower() for s in settings))]
    metas = [m for m in metas if m]
    if not metas:
        return "no rows measured yet"

    def values(key: str) -> str:
        return ", ".join(sorted({str(m.get(key)) for m in metas}))

    dates = sorted(m["date"] for m in metas if m.get("date")) or ["an unrecorded date"]
    span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    models = sorted({m["cpu"] for m in metas if m.get("cpu")}) + (["unrecorded"] if any(not m.get("cpu") for m in metas) else [])
    return (f"machine {values('machine')} (CPU {', '.join(models)}; {values('cpus')} CPUs, {values('threads')} threads), torch "
            f"{values('torch')}, JSON last written {span}")  # fmt: skip


def markdown(tables: dict[str, list[dict]], a: argparse.Namespace, where: str) -> str:
    metric = a.metrics[0]
    names = {"fid": "FID", "sfid": "sFID", "precision": "precision", "recall": "recall",
             "domain_fd": "domain FD", "class_acc": "class acc"}  # fmt: skip
    head = ["setting", "method", "bits/weight", *(names.get(m, m) for m in a.metrics),
            f"RTN's {names.get(metric, metric)} loss recovered", "PSNR vs FP (dB)", "seeds"]  # fmt: skip
    lines = [
        f"{a.model}: {a.num} samples per seed, DDIM {a.steps} steps, CFG 1.5, against the Fashion-MNIST "
        f"test set; {where}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    fp_shown = False
    for setting, rows in tables.items():
        for r in rows:
            if r["row"] == "fp" and fp_shown:  # the same row in every setting: shown once, first
                continue
            fp_shown = fp_shown or r["row"] == "fp"
            rec = r.get("recovered")
            bpw = r.get("bits_per_weight")
            cells = [setting if r["row"] != "fp" else "FP", r["label"], "—" if bpw is None else f"{bpw:.2f}",
                     *(fmt(r, m) for m in a.metrics), "—" if rec is None else f"{rec:.2f}",
                     fmt(r, "psnr_fp"), str(len(r["seeds"]))]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    searches = sorted({(r["label"], " ".join(normalise_flags(r["search"].split())))
                       for rows in tables.values() for r in rows if r.get("search")})  # fmt: skip
    if searches:
        lines += ["", "Searched recipes (`qdit search` flags beside the setting's bits):", "",
                  *(f"- {label}: `{flags}`" for label, flags in searches)]  # fmt: skip
    targets = acceptance(tables, metric)
    if targets:
        lines += ["", f"Issue 12's targets ({names.get(metric, metric)}, means over each row's seeds):", "",
                  *targets]  # fmt: skip
    steps = ablation(tables, metric)
    if steps:
        lines += ["", f"Q-DiT's steps, {names.get(metric, metric)} (each against the step it adds to, on the seeds "
                  "both have):", "", *steps]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(tables: dict[str, list[dict]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[str, list[tuple[float, float, str]]] = {}
    for setting, rows in tables.items():
        for r in rows:
            if r.get(metric) is not None and r.get("bits_per_weight") is not None:
                series.setdefault(r["label"], []).append((r["bits_per_weight"], r[metric], setting))
    for label, pts in series.items():
        pts = sorted(set(pts))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "o", label=label)
    ax.set_xlabel("bits per weight (codes + scales + zero points)")
    ax.set_ylabel({"fid": "FID", "domain_fd": "domain FD"}.get(metric, metric))
    values = [p[1] for pts in series.values() for p in pts]
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid(tables: dict[str, list[dict]], setting: str, work: Path, path: Path, count: int) -> None:
    from PIL import Image, ImageDraw

    strips, missing = [], []
    for r in tables.get(setting, []):
        npz = work / f"{sample_name(r)}_s{r['seeds'][0]}.npz"
        if npz.is_file():
            with np.load(npz) as f:
                imgs = f["arr_0"][:count, ..., 0]
            strips.append((r["label"], np.concatenate(list(imgs), axis=1)))
        else:
            missing.append(r["label"])
    if missing and path.is_file():  # a work/ folder of another machine or a fresh clone: keep the whole grid
        print(f"{path.name} kept as it is: no samples in {work} for {', '.join(missing)}", flush=True)
        return
    if missing:
        print(f"{path.name} without {', '.join(missing)}: no samples in {work}", flush=True)
    if not strips:
        return
    pad, label_w = 2, 230
    h, w = strips[0][1].shape
    canvas = Image.new("L", (label_w + w, len(strips) * (h + pad)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, (label, strip) in enumerate(strips):
        draw.text((2, i * (h + pad) + h // 2 - 5), label, fill=255)
        canvas.paste(Image.fromarray(strip), (label_w, i * (h + pad)))
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 samples, 10 steps, one seed, W4A8, no search, domain metrics")
    p.add_argument("--hard", action="store_true", help=f"also {', '.join(HARD_SETTINGS)}")
    p.add_argument("--settings", default=None, help=f"comma-separated (default {','.join(SETTINGS)})")
    p.add_argument("--rows", default=None, help=f"comma-separated rows of {','.join(ALL_ROWS)} (default all)")
    p.add_argument("--key-rows", default="fp,rtn,gptq,ptq4dit,qdit_dynamic,qdit_gptq,qdit_full,qdit_cheap,qdit_full_gptq,qdit_cheap_gptq",
                   help="rows sampled with every seed (the others: the first seed)")  # fmt: skip
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--num", type=int, default=None, help="samples per seed (default 1000; --quick 100)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; --quick 10)")
    p.add_argument("--metrics", default=None, help=f"default {','.join(FULL_METRICS)} (--quick: {','.join(QUICK_METRICS)})")
    p.add_argument("--model", default="embedded")
    p.add_argument("--calib-samples", type=int, default=None, help="default 16 (--quick 4)")
    p.add_argument("--calib-steps", type=int, default=None, help="default 25 (--quick 10)")
    p.add_argument("--full-search-args", default=SEARCH_FLAGS, help=f"extra qdit search flags of the full search rows (default {SEARCH_FLAGS!r})")
    p.add_argument("--cheap-search-args", default=SEARCH_FLAGS, help=f"extra qdit search flags of the cheap search rows (default {SEARCH_FLAGS!r})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="Inception features under bf16 autocast")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid-setting", default="W4A8", help="the setting whose rows make grid.png")
    p.add_argument("--grid-count", type=int, default=8, help="images per row of grid.png")
    p.add_argument("--out-dir", default=None, help="default benchmarks/results (--quick: benchmarks/results/quick)")
    p.add_argument("--force", action="store_true", help="redo rows that are done already")
    p.add_argument("--table-only", action="store_true",
                   help="sample and score nothing: the table, plot and grid from the JSON there is (the PSNR "
                        "column filled in from the samples in work/ where they are the scored ones)")  # fmt: skip
    p.add_argument("--update-benchmarks", nargs="?", const=str(ROOT / "BENCHMARKS.md"), default=None, metavar="MD",
                   help=f"also put the table into MD (default BENCHMARKS.md), between {TABLE.begin} and {TABLE.end}")  # fmt: skip
    a = p.parse_args(argv)
    q = a.quick
    a.num = a.num or (100 if q else 1000)
    a.steps = a.steps or (10 if q else 50)
    a.calib_samples = a.calib_samples or (4 if q else 16)
    a.calib_steps = a.calib_steps or (10 if q else 25)
    a.metrics = [m for m in (a.metrics or ",".join(QUICK_METRICS if q else FULL_METRICS)).split(",") if m]
    out = Path(a.out_dir or ROOT / "benchmarks" / "results" / ("quick" if q else ""))
    if a.table_only and not a.settings:  # every setting measured so far
        a.settings = ",".join(s for s in (*SETTINGS, *HARD_SETTINGS) if (out / f"{s.lower()}.json").is_file())
    a.settings = [s.upper() for s in (a.settings or ("W4A8" if q else ",".join(SETTINGS))).split(",") if s]
    if a.hard:
        a.settings += [s for s in HARD_SETTINGS if s not in a.settings]
    for s in a.settings:
        parse_setting(s)
    a.rows = [r for r in (a.rows or ",".join(QUICK_ROWS if q else ALL_ROWS)).split(",") if r]
    unknown = sorted(set(a.rows) - set(ALL_ROWS))
    if unknown:
        p.error(f"unknown rows: {', '.join(unknown)} (rows: {', '.join(ALL_ROWS)})")
    a.key_rows = [r for r in a.key_rows.split(",") if r]
    a.seeds = [int(s) for s in (a.seeds.split(",")[:1] if q else a.seeds.split(","))]
    a.out_dir = str(out)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    benchmarks = Path(a.update_benchmarks or ROOT / "BENCHMARKS.md")
    if a.update_benchmarks and not TABLE.in_doc(benchmarks.read_text() if benchmarks.is_file() else ""):
        print(f"results.py: {benchmarks} has no {TABLE.begin} ... {TABLE.end} block to put the table in", file=sys.stderr)
        return 2
    error = check_weights(out / "work", a.model, record=not a.table_only)
    if error:
        print(f"results.py: {error}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    tables = Runner(a).run()
    add_recovery(tables, a.metrics[0])
    for setting, rows in tables.items():  # the recovery fractions go into the JSON too
        path = out / f"{setting.lower()}.json"
        with locked(lock_of(path)):
            data = read_json(path)
            if data:
                by = {r["row"]: r for r in rows}
                mine = (r for r in data["rows"] if r["row"] in by and r.get("config") == by[r["row"]].get("config"))
                for r in mine:  # rows of another config: left as they are
                    r["recovered"], r["recovered_metric"] = by[r["row"]]["recovered"], a.metrics[0]
                write_json(path, data)
    tables = {k: rows for k, rows in tables.items() if any(r["row"] != "fp" for r in rows)}
    if a.table_only and not tables:
        print(f"results.py: no quantized rows of this configuration in {out} (samples {a.num}, steps {a.steps}, "
              f"metrics {','.join(a.metrics)}, ...): nothing written", file=sys.stderr)  # fmt: skip
        return 2
    text = markdown(tables, a, measured(out, list(tables)))
    (out / "results.md").write_text(text)
    if a.update_benchmarks:
        error = TABLE.write(benchmarks, text)
        if error:
            print(f"results.py: {error}", file=sys.stderr)
            return 2
    plot(tables, a.metrics[0], out / "fid_vs_bpw.png")
    grid(tables, a.grid_setting.upper(), out / "work", out / "grid.png", a.grid_count)
    print()
    print(text)
    print(f"wrote {out}/results.md, fid_vs_bpw.png, grid.png and the per-setting JSON in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
