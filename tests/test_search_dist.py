"""Candidates spread over two gloo processes give the same search as one process; rank 0 writes state."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from qdit.diffusion.distributed import DistContext
from qdit.search.cheap import CheapConfig, run_cheap
from qdit.search.cost import Budget, CostModel
from qdit.search.evolution import EvolutionConfig
from qdit.search.runner import run_full
from qdit.search.space import CandidateRule, LayerInfo, SearchSpace, genome_key
from search_doubles import SyntheticObjective

EVO = EvolutionConfig(population=8, top_k=3, generations=3)
CHEAP = CheapConfig(
    pool=6,
    lofi_batch=5,
    lofi_rounds=2,
    shortlist=3,
    proxy_population=12,
    proxy_generations=4,
    lofi_min_samples=2,
)


def _space() -> SearchSpace:
    return SearchSpace(tuple(LayerInfo(f"l{i}", 256, 64) for i in range(6)), rule=CandidateRule())


def _search(method: str, state: str | None, d: DistContext, obj: SyntheticObjective):
    space = _space()
    if method == "full":
        return run_full(
            space, CostModel(), Budget("mean_group", 128), obj, 8, EVO, seed=3, state_path=state, dist=d
        )
    config = CHEAP if method == "cheap" else replace(CHEAP, strategy="bayes")
    return run_cheap(
        space, CostModel(), Budget("mean_group", 128), obj, 8, config, seed=3, state_path=state, dist=d
    )


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for method in ("full", "cheap", "cheap-bayes"):
            obj = SyntheticObjective(_space())
            res = _search(method, os.path.join(out, f"{method}.state.json"), DistContext.current(), obj)
            calls = [c for c in obj.calls if c[0] == "fitness"]
            with open(os.path.join(out, f"{method}.rank{rank}.json"), "w") as f:
                json.dump({"best": list(res.best_genome), "history": res.history, "calls": calls}, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("method", ["full", "cheap", "cheap-bayes"])  # cheap: the gradient strategy
def test_two_gloo_ranks_match_one_process(two_ranks, method):
    tmp_path = two_ranks
    single = _search(method, None, DistContext(), SyntheticObjective(_space()))
    ranks = [json.loads((tmp_path / f"{method}.rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["best"] == list(single.best_genome)
        assert r["history"] == single.history
    # each rank evaluated its share, nobody evaluated a candidate twice
    c0 = {(k, n) for _, k, n in ranks[0]["calls"]}
    c1 = {(k, n) for _, k, n in ranks[1]["calls"]}
    assert c0 and c1 and not c0 & c1
    fits = {(h["key"], h["n"]) for h in single.history if h["kind"] == "fit"}
    assert c0 | c1 == fits
    state = json.loads((tmp_path / f"{method}.state.json").read_text())
    assert state["history"] == single.history
    assert genome_key(single.best_genome) in {h["key"] for h in state["history"]}
