"""The generic adapter: any nn.Module, its linears chosen by name patterns, calibrated by a callable."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import qdit
from qdit.errors import QditError
from qdit.models import PatternAdapter, attach_adapter, get_adapter, register_factory
from qdit.recipe import QuantSpec, Recipe
from quant_helpers import one_thread  # noqa: F401  (autouse fixture)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x))) * scale


class Mixer(nn.Module):
    """Not a DiT: a stem, two residual blocks, a head."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Linear(8, dim)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.head = nn.Linear(dim, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        scale = torch.ones(())
        for block in self.blocks:
            h = block(h, scale)
        return self.head(h)


def make_mixer(dim: int = 32) -> Mixer:
    torch.manual_seed(0)
    return Mixer(dim).eval()


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 16, 8, generator=g) for _ in range(3)]


def calibrate(model: nn.Module) -> None:
    for x in batches():
        model(x)


def adapter(**kw) -> PatternAdapter:
    return PatternAdapter(
        ["blocks.*.up", "blocks.*.down"], calibrate=calibrate, optional_groups={"io": ["stem", "head"]}, **kw
    )


def test_patterns_choose_the_layers() -> None:
    model = attach_adapter(make_mixer(), adapter())
    ad = get_adapter(model)
    groups = ad.layer_groups(model)
    assert groups["default"] == ["blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down"]
    assert groups["io"] == ["stem", "head"]
    q = qdit.quantize(model, Recipe(default=QuantSpec(8, 8, 8, 8), include=["io"]))
    assert sum(type(m).__name__ == "QuantLinear" for m in q.modules()) == 6


def test_unknown_model_without_calibration_says_what_to_do() -> None:
    with pytest.raises(QditError, match="PatternAdapter"):
        qdit.quantize(make_mixer(), Recipe.baseline("rtn"))


@pytest.mark.parametrize("blocks", [None, ["blocks.0", "blocks.1"]])
def test_calibration_callable_drives_static_and_gptq(blocks: list[str] | None) -> None:
    fp = make_mixer()
    x = batches()[0]
    ref = fp(x)
    for recipe in (Recipe.baseline("rtn", w_bits=8), Recipe.baseline("gptq")):
        q = qdit.quantize(attach_adapter(copy.deepcopy(fp), adapter(blocks=blocks)), recipe)
        with torch.no_grad():
            err = float((q(x) - ref).pow(2).mean() / ref.pow(2).mean())
        assert err < 0.05, (recipe.default.label(), err)


def test_save_and_load_through_a_registered_factory(tmp_path: Path) -> None:
    register_factory("test-mixer", make_mixer)
    fp = attach_adapter(make_mixer(), adapter(factory="test-mixer", factory_kwargs={"dim": 32}))
    q = qdit.quantize(fp, QuantSpec(4, 8, 16, 16))
    qdit.save(q, tmp_path / "q")
    back = qdit.load(tmp_path / "q", kernel="fake")
    x = batches()[0]
    assert torch.equal(back(x), q(x))
    assert get_adapter(back).layer_groups(back)["default"] == get_adapter(q).layer_groups(q)["default"]


def test_save_without_factory_is_refused(tmp_path: Path) -> None:
    q = qdit.quantize(attach_adapter(make_mixer(), adapter()), QuantSpec(4, 8, 16, 16))
    with pytest.raises(QditError, match="cannot describe"):
        qdit.save(q, tmp_path / "q")
