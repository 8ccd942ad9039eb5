"""A search's session: the resumable state file, the evaluation log, the sample features kept for reuse,
the progress bar and the result, around any search algorithm (:class:`SearchSession`).

The state is one JSON file, written atomically after every evaluation (every round of ``world``
evaluations under ``torch.distributed``), by rank 0 only. Sample features kept for reuse (the cheap
search extends a candidate's samples instead of drawing them again) go to the folder
``<state>.features/`` beside it. A search started again with ``resume=True`` reloads both and
continues where it stopped, without evaluating anything twice; a state written by a different
search (other model, weights, budget, seed, settings) is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdit.diffusion.distributed import DistContext, broadcast
from qdit.errors import QditError
from qdit.io.atomic import atomic_path, write_json
from qdit.search.cost import Budget, CostModel
from qdit.search.objective import Evaluation, Objective, StatefulObjective
from qdit.search.space import Genome, SearchSpace, genome_key, key_genome

STATE_VERSION = 1
MEASUREMENTS = ("fit", "fidelity", "proxy")  # sample-based fitness, distance to the float model, proxy


def _enc(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _dec(x: float | None) -> float:
    return math.inf if x is None else float(x)


class FeatureStore:
    """Per-genome sample features kept for reuse; on disk one small ``.npz`` per genome in a folder,
    written when the genome's features grow (so saving costs one file, not the whole store)."""

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}
        self.dirty: set[str] = set()

    def get(self, key: str) -> np.ndarray | None:
        return self.data.get(key)

    def put(self, key: str, feats: np.ndarray | None) -> None:
        if feats is not None and len(feats) > len(self.data.get(key, ())):
            self.data[key] = np.asarray(feats, dtype=np.float32)
            self.dirty.add(key)

    @staticmethod
    def _file(folder: Path, key: str) -> Path:
        return folder / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".npz")

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for key in sorted(self.dirty):
            with atomic_path(self._file(folder, key), ".npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, key=np.array(key), features=self.data[key])
        self.dirty.clear()

    def load(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.npz")):
            try:
                with np.load(path) as z:
                    self.data[str(z["key"])] = z["features"]
            except (OSError, KeyError, ValueError, zipfile.BadZipFile):
                continue  # a damaged file: those samples are drawn again
        self.dirty.clear()


REFERENCE_KEY = "reference-features"  # the store's key prefix for an objective's reference features


@dataclass
class SearchLog:
    """Everything a search measured, in order; the state file's common part."""

    method: str
    fingerprint: dict
    cache: dict[str, float] = field(default_factory=dict)  # "<kind>:<samples>:<genome key>" -> value
    history: list[dict] = field(default_factory=list)
    images: int = 0
    forwards: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def record(self, stage: str, kind: str, genome: Sequence[int], n: int, ev: Evaluation) -> None:
        key = genome_key(genome)
        if kind in MEASUREMENTS:
            self.cache[f"{kind}:{n}:{key}"] = float(ev.value)
        self.images += int(ev.images)
        self.forwards += int(ev.forwards)
        self.history.append(
            {
                "stage": stage,
                "kind": kind,
                "key": key,
                "n": n,
                "value": _enc(ev.value),
                "images": self.images,
                "forwards": self.forwards,
            }
        )

    def lookup(self, kind: str, genome: Sequence[int], n: int = 0) -> float | None:
        key = genome_key(genome)
        return self.cache.get(f"{kind}:{n}:{key}")

    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "method": self.method,
            "fingerprint": self.fingerprint,
            "cache": {k: _enc(v) for k, v in self.cache.items()},
            "history": self.history,
            "images_sampled": self.images,
            "forwards": self.forwards,
            "seconds": self.seconds,
            "extra": self.extra,
        }

    def load_dict(self, d: dict) -> None:
        if d.get("version") != STATE_VERSION:
            raise QditError(f"search state version {d.get('version')} is not {STATE_VERSION}; start afresh")
        if d.get("method") != self.method or d.get("fingerprint") != self.fingerprint:
            diff = _differences(self.fingerprint, d.get("fingerprint", {}))
            if diff == ["objective.kernel"]:
                saved = d["fingerprint"].get("objective", {}).get("kernel", "fake")
                raise QditError(
                    f"the saved search ran its candidates on the {saved!r} kernel: resume it without --kernel "
                    f"(or with --kernel {saved})"
                )
            what = ", ".join(diff) or "method"
            raise QditError(
                f"the saved search state belongs to a different search ({what} differ); start without --resume"
            )
        self.cache = {k: _dec(v) for k, v in d["cache"].items()}
        self.history = list(d["history"])
        self.images = int(d["images_sampled"])
        self.forwards = int(d["forwards"])
        self.seconds = float(d.get("seconds", 0.0))
        self.extra = dict(d.get("extra", {}))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The keys whose values differ between ``a`` and ``b``, nested dicts' keys dotted (``objective.steps``)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _normalise(obj: object) -> object:
    """The JSON form of ``obj`` (tuples become lists), so fingerprints compare equal after a reload."""
    return json.loads(json.dumps(obj))


def saved_objective(path: str | Path) -> dict | None:
    """The objective's description in the search state saved at ``path`` (None when none can be read
    there: the search then starts afresh, or reading it reports what is wrong)."""
    try:
        objective = json.loads(Path(path).read_text())["fingerprint"]["objective"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return objective if isinstance(objective, dict) else None


def shared_saved_objective(path: str | Path | None, dist: DistContext) -> dict | None:
    """``saved_objective(path)`` read once, on rank 0 (the rank that writes the state file), and sent
    to every rank so that all of them resume the same way."""
    objective = saved_objective(path) if path is not None and dist.is_main else None
    return broadcast(objective, dist)


def saved_kernel(objective: dict | None) -> str:
    """The kernel the candidates of a saved search (its ``saved_objective``) ran on (``"fake"`` for states
    written before the setting existed); ``"auto"`` when there is no saved search."""
    return "auto" if objective is None else str(objective.get("kernel", "fake"))


class StateFile:
    """The state JSON (plus the features sidecar) of one search; only rank 0 writes."""

    def __init__(self, path: str | Path | None, dist: DistContext) -> None:
        self.path = Path(path) if path is not None else None
        self.dist = dist

    @property
    def features_path(self) -> Path | None:
        return self.path.with_name(self.path.name + ".features") if self.path is not None else None

    def read(self, resume: bool) -> dict | None:
        state = None
        if resume and self.path is not None and self.dist.is_main and self.path.is_file():
            try:
                state = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise QditError(f"cannot read the search state {self.path}: {exc}") from None
        return broadcast(state, self.dist)

    def clear_features(self) -> None:
        """Remove the features of an earlier search at this path (a fresh start must not reuse them)."""
        folder = self.features_path
        if folder is None or not self.dist.is_main or not folder.is_dir():
            return
        for path in folder.glob("*.npz"):
            path.unlink()

    def read_features(self, store: FeatureStore, resume: bool) -> None:
        if resume and self.features_path is not None:
            data = store.data
            if self.dist.is_main:
                store.load(self.features_path)
                data = store.data
            store.data = broadcast(data, self.dist)

    def write(self, state: dict, store: FeatureStore | None = None) -> None:
        if self.path is None or not self.dist.is_main:
            return
        if store is not None and store.dirty and self.features_path is not None:
            store.save(self.features_path)
        write_json(self.path, state)


@dataclass
class SearchResult:
    method: str
    space: SearchSpace
    best_genome: Genome
    best_fitness: float
    baseline_group: int
    baseline_genome: Genome
    baseline_fitness: float
    budget: Budget
    evaluations: int  # sample-based fitness evaluations (any number of samples)
    proxy_evaluations: int
    images_sampled: int
    forwards: int
    forwards_per_image: int
    seconds: float
    history: list[dict]
    num_samples: int
    extra: dict = field(default_factory=dict)

    @property
    def image_equivalents(self) -> float:
        """All model forwards (screening and proxies included) in units of one generated image."""
        return self.forwards / max(1, self.forwards_per_image)

    def report(self, cost: CostModel) -> dict:
        best_cost = cost.report(self.space, self.best_genome)
        base_cost = cost.report(self.space, self.baseline_genome)
        settings = self.space.settings(self.best_genome)
        return {
            "method": self.method,
            "best_fitness": _enc(self.best_fitness),
            "best_genome": list(self.best_genome),
            "best_layers": {
                name: {"w_group": s.w_group, "a_group": s.a_group, "w_bits": s.w_bits, "a_bits": s.a_bits}
                for name, s in settings.items()
            },
            "baseline_group_size": self.baseline_group,
            "baseline_fitness": _enc(self.baseline_fitness),
            "budget": {
                **self.budget.to_dict(),
                "description": self.budget.describe(),
                "best": self.budget.measure(cost, self.space, self.best_genome),
                "baseline": self.budget.measure(cost, self.space, self.baseline_genome),
                "met": self.budget.meets(cost, self.space, self.best_genome),
            },
            "cost": {"best": best_cost, "baseline": base_cost},
            "evaluations": self.evaluations,
            "proxy_evaluations": self.proxy_evaluations,
            "images_sampled": self.images_sampled,
            "model_forwards": self.forwards,
            "image_equivalents": self.image_equivalents,
            "num_samples": self.num_samples,
            "seconds": self.seconds,
            "history": self.history,
            **self.extra,
        }


def best_full(log: SearchLog, n: int) -> tuple[Genome, float] | None:
    """The best genome measured with ``n`` samples (ties: the one measured first)."""
    best: tuple[str, float] | None = None
    for h in log.history:
        if h["kind"] == "fit" and h["n"] == n:
            v = _dec(h["value"])
            if best is None or v < best[1]:
                best = (h["key"], v)
    return (key_genome(best[0]), best[1]) if best else None


class Progress:
    """A tqdm bar (when asked for) showing the best fitness so far."""

    def __init__(self, enabled: bool, total: int, desc: str, unit: str = "eval") -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit)

    def update(self, n: int = 1, best: float | None = None, **extra: object) -> None:
        if self.bar is None:
            return
        post = {"best": f"{best:.4g}"} if best is not None and math.isfinite(best) else {}
        post.update({k: str(v) for k, v in extra.items()})
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fingerprint(
    method: str,
    space: SearchSpace,
    cost: CostModel,
    budget: Budget,
    objective: Objective,
    seed: int,
    settings: dict,
) -> dict:
    return _normalise(
        {
            "method": method,
            "space": space.describe(),
            "cost": {
                "scale_bits": cost.scale_bits,
                "symmetric": cost.symmetric,
                "rescale_bits": cost.rescale_bits,
            },
            "budget": budget.to_dict(),
            "objective": objective.describe(),
            "seed": seed,
            **settings,
        }
    )  # type: ignore[return-value]


class SearchSession:
    """One search's bookkeeping around its algorithm: the state file (read on resume, written after
    every measurement), the log of everything measured, the sample features kept for reuse, the
    objective's own saved state, the progress bar and the result.

    ``check_saved(state)`` may refuse a saved state before it is loaded.
    """

    def __init__(
        self,
        method: str,
        fingerprint: dict,
        objective: Objective,
        state_path: str | Path | None = None,
        resume: bool = False,
        dist: DistContext | None = None,
        on_evaluation: Callable[[SearchLog], None] | None = None,
        check_saved: Callable[[dict], None] | None = None,
    ) -> None:
        self.dist = dist or DistContext.current()
        self.objective = objective
        self.on_evaluation = on_evaluation
        self.log = SearchLog(method, fingerprint)
        self.store = FeatureStore()
        self.state_file = StateFile(state_path, self.dist)
        saved = self.state_file.read(resume)
        self.resumed = saved is not None
        if saved is not None:
            if check_saved is not None:
                check_saved(saved)
            self.log.load_dict(saved)
            self.state_file.read_features(self.store, resume)
            self._restore_reference()
        else:
            self.state_file.clear_features()
        self._started = time.perf_counter() - self.log.seconds
        self.bar = Progress(False, 0, "")

    # --- the objective's own state -------------------------------------------------------------
    def _restore_reference(self) -> None:
        """Give the objective back the reference features a resumed search saved."""
        if isinstance(self.objective, StatefulObjective):
            prefix = f"{REFERENCE_KEY}:"
            self.objective.restore_reference_cache(
                {k[len(prefix) :]: v for k, v in self.store.data.items() if k.startswith(prefix)}
            )

    def _stash_reference(self) -> None:
        """Put the objective's reference features (e.g. the float model's samples) into the store, so a
        resumed search does not draw them again."""
        if isinstance(self.objective, StatefulObjective):
            for key, feats in self.objective.reference_cache().items():
                self.store.put(f"{REFERENCE_KEY}:{key}", feats)

    @property
    def setup_cost(self) -> Evaluation | None:
        """What preparing the objective cost (e.g. the proxy's full-precision trajectories)."""
        return self.objective.setup_cost if isinstance(self.objective, StatefulObjective) else None

    # --- measurements ----------------------------------------------------------------------------
    def record(self, stage: str, kind: str, genome: Sequence[int], n: int, ev: Evaluation) -> None:
        """Log a measurement; a sample-based one also keeps its features for reuse."""
        if kind in ("fit", "fidelity"):
            self.store.put(genome_key(genome), ev.features)
        self.log.record(stage, kind, genome, n, ev)

    def features(self, genome: Sequence[int]) -> np.ndarray | None:
        """The features of ``genome``'s samples measured so far (``None``: none)."""
        return self.store.get(genome_key(genome))

    def commit(
        self,
        advance: int,
        best: float | None = None,
        notify: bool = True,
        extra: dict | None = None,
        **post: object,
    ) -> None:
        """After a measurement: save the state (``extra`` goes into its ``extra``), move the progress bar by
        ``advance`` and tell ``on_evaluation``."""
        self.save(extra)
        self.bar.update(advance, best=best, **post)
        if notify and self.on_evaluation is not None:
            self.on_evaluation(self.log)

    def save(self, extra: dict | None = None) -> None:
        self.log.seconds = time.perf_counter() - self._started
        if extra:
            self.log.extra.update(extra)
        self._stash_reference()
        self.state_file.write(self.log.to_dict(), self.store)

    # --- progress and result ---------------------------------------------------------------------
    def progress(
        self,
        enabled: bool,
        total: int,
        desc: str,
        unit: str = "eval",
        done: int = 0,
        best: float | None = None,
    ) -> None:
        """Show a progress bar (rank 0 only) of ``total``, ``done`` of it already done (a resumed run)."""
        self.bar = Progress(enabled and self.dist.is_main, total, desc, unit=unit)
        self.bar.update(done, best=best)

    def close(self) -> None:
        self.bar.close()

    def result(
        self,
        space: SearchSpace,
        best: tuple[Genome, float],
        baseline_group: int,
        baseline_genome: Genome,
        baseline_fitness: float | None,
        budget: Budget,
        evaluations: int,
        proxy_evaluations: int,
        num_samples: int,
        extra: dict,
    ) -> SearchResult:
        log = self.log
        return SearchResult(
            method=log.method,
            space=space,
            best_genome=best[0],
            best_fitness=best[1],
            baseline_group=baseline_group,
            baseline_genome=baseline_genome,
            baseline_fitness=baseline_fitness if baseline_fitness is not None else math.nan,
            budget=budget,
            evaluations=evaluations,
            proxy_evaluations=proxy_evaluations,
            images_sampled=log.images,
            forwards=log.forwards,
            forwards_per_image=self.objective.forwards_per_image,
            seconds=log.seconds,
            history=log.history,
            num_samples=num_samples,
            extra=extra,
        )
