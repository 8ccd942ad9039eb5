"""The quantizer rules (qdit.quant.rules): what they accept, that everyone uses them, and that no second
copy of them creeps back into the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qdit.errors import QditError
from qdit.quant.gptq import gptq_quantize
from qdit.quant.methods import IMPLEMENTATIONS, quantize_by_method
from qdit.quant.rules import (
    MAX_BITS,
    MIN_BITS,
    WEIGHT_METHODS,
    check_bits,
    check_divides,
    check_group_size,
    divides,
    weight_method,
)
from qdit.quant.weight import quantize_weight
from qdit.recipe import QuantSpec, RecipeError

SRC = Path(__file__).resolve().parents[1] / "src" / "qdit"


def test_bits() -> None:
    assert [check_bits(b) for b in range(MIN_BITS, MAX_BITS + 1)] == list(range(2, 9))
    for bad in (1, 9, 0, -4, 4.0, True, "4", None):
        with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8"):
            check_bits(bad)
    with pytest.raises(QditError, match=r"^--w-bits must be an integer in 2\.\.8, got 9$"):
        check_bits(9, "--w-bits", QditError)


def test_divides() -> None:
    assert divides(0, 64) and divides(64, 64) and divides(16, 64) and divides(1, 7)
    assert not divides(48, 64) and not divides(128, 64) and not divides(-16, 64)
    assert check_divides(32, 64) == 32
    with pytest.raises(ValueError, match=r"^group size 48 does not divide the width 64$"):
        check_divides(48, 64)
    with pytest.raises(RecipeError, match=r"^layer fc: weight group 48 does not divide its input width 64$"):
        check_divides(48, 64, "weight group", "fc", RecipeError)


def test_group_size() -> None:
    assert [check_group_size(g) for g in (0, 1, 128)] == [0, 1, 128]
    for bad in (-1, 1.0, True, "64", None):
        with pytest.raises(ValueError, match=r"^group size must be an integer >= 0 \(0 = one group per row\)"):
            check_group_size(bad)
    # the recipe and the tensor math say it with the same rule
    with pytest.raises(RecipeError, match=r"^a_group must be an integer >= 0 \(0 = one group per row\), got -1$"):
        QuantSpec(a_group=-1)
    from qdit.quant.primitives import check_group_size as primitives_check

    assert primitives_check(None) is None and primitives_check(32) == 32
    with pytest.raises(ValueError, match=r"^group size must be an integer >= 0"):
        primitives_check(-4)


def test_weight_method_registry() -> None:
    assert list(WEIGHT_METHODS) == ["rtn", "mse", "gptq"]
    assert IMPLEMENTATIONS.keys() == WEIGHT_METHODS.keys()  # every registered method is implemented
    assert [n for n, m in WEIGHT_METHODS.items() if m.needs_hessian] == ["gptq"]
    with pytest.raises(ValueError, match="weight_method must be one of rtn, mse, gptq, got 'awq'"):
        weight_method("awq")
    # the recipe validates with the registry and asks it what needs calibration
    assert QuantSpec(weight_method="gptq").needs_hessian and not QuantSpec(weight_method="mse").needs_hessian
    with pytest.raises(RecipeError, match="weight_method must be one of rtn, mse, gptq"):
        QuantSpec(weight_method="awq")


def test_quantize_by_method_dispatches_to_the_implementations() -> None:
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(8, 64, generator=g), torch.randn(256, 64, generator=g)
    h = x.T @ x / len(x)
    for name in ("rtn", "mse"):
        got, want = quantize_by_method(w, name, 4, 32), quantize_weight(w, 4, 32, method=name)
        assert torch.equal(got.codes, want.codes) and torch.equal(got.scale, want.scale)
    got, want = quantize_by_method(w, "gptq", 4, 32, hessian=h), gptq_quantize(w, h, 4, 32)
    assert torch.equal(got.codes, want.codes) and torch.equal(got.scale, want.scale)
    with pytest.raises(ValueError, match="needs the Hessian"):
        quantize_by_method(w, "gptq", 4, 32)


def test_rules_import_no_torch() -> None:
    code = "import sys, qdit.quant.rules, qdit.recipe, qdit.commands.quantize; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


WIDTH_NAMES = {"width", "in_features", "coarse", "w", "K"}
GROUP_NAMES = {"g", "group", "group_size", "a_group", "w_group", "fine"}
BIT_BOUNDS = {1, 2, 8, 9, 16}


def _second_copies(tree: ast.AST) -> list[tuple[int, str]]:
    """What writes a rule of :mod:`qdit.quant.rules` again: a literal bit bound compared with a bits value
    (``2 <= bits <= 8``, ``bits > 8``), a hand-written divisibility test of a width by a group size
    (``width % g``), or an error message of either rule (``... does not divide ...``, ``bits must ...``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = {
                n.id if isinstance(n, ast.Name) else getattr(n, "attr", "")
                for n in [node.left, *node.comparators]
            }
            consts = {n.value for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)}
            if (
                any("bits" in str(n) for n in names)
                and consts & BIT_BOUNDS
                and not isinstance(node.ops[0], (ast.Eq, ast.NotEq))
            ):
                found.append((node.lineno, "a literal bit bound"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            left, right = (
                n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in (node.left, node.right)
            )
            if left in WIDTH_NAMES and right in GROUP_NAMES:
                found.append((node.lineno, "a divisibility test by a group size"))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            text = " ".join(
                n.value
                for n in ast.walk(node.exc)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            )
            if re.search(r"\b(does not|do not|must) divide\b|\bbits must\b|\b2\.\.8\b", text):
                found.append((node.lineno, "an error message of a rule"))
    return found


def test_each_rule_is_written_once() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).as_posix() == "quant/rules.py":
            continue
        for line, what in _second_copies(ast.parse(path.read_text())):
            found.append(f"{path.relative_to(SRC)}:{line}: {what}")
    assert not found, "a rule of qdit.quant.rules written again (call it instead):\n" + "\n".join(found)


def test_the_scan_sees_second_copies() -> None:
    code = (
        "if not 2 <= bits <= 8: raise ValueError('bits must be in 2..8')\n"
        "if self.a_bits > 8: pass\n"
        "if width % g: raise ValueError(f'group {g} does not divide {width}')\n"
    )
    assert sorted(line for line, _ in _second_copies(ast.parse(code))) == [1, 1, 2, 3, 3]


def test_granularities_are_values_with_one_parser() -> None:
    from qdit.quant.rules import (
        ACT_GRANULARITIES,
        DYNAMIC_GRANULARITIES,
        LAYOUT_GRANULARITIES,
        PerChannel,
        PerFrame,
        PerGroup,
        PerSample,
        PerToken,
        Static,
        parse_act_granularity,
        parse_group,
    )

    # the spellings round-trip through the values, and a value parses to itself
    for spelling in (0, 1, 32, 128):
        value = parse_group(spelling)
        assert value.spelling == spelling and parse_group(value) is value
    assert parse_group(0) == PerChannel() and parse_group(64) == PerGroup(64)
    values = [PerToken(), PerSample(), PerFrame(), Static()]
    assert [parse_act_granularity(s) for s in ACT_GRANULARITIES] == values
    assert tuple(v.spelling for v in values) == ACT_GRANULARITIES == ("token", "sample", "frame", "static")
    assert DYNAMIC_GRANULARITIES == ("token", "sample", "frame") and LAYOUT_GRANULARITIES == ("sample", "frame")
    assert PerToken() != PerSample() and hash(PerGroup(8)) == hash(PerGroup(8))
    # bad values: the messages the recipe and the CLI always gave
    with pytest.raises(ValueError, match=r"^act_granularity must be one of token, sample, frame, static, got 'tensor'$"):
        parse_act_granularity("tensor")
    with pytest.raises(QditError, match=r"^--act-granularity must be one of token, sample, frame, static, got 3$"):
        parse_act_granularity(3, "--act-granularity", QditError)
    with pytest.raises(ValueError, match=r"^group size must be an integer >= 0 \(0 = one group per row\), got -8$"):
        parse_group(-8)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"^PerGroup size must be an integer >= 1"):
            PerGroup(bad)


def test_quant_spec_takes_granularity_values_and_keeps_the_spellings() -> None:
    from qdit.quant.rules import PerChannel, PerFrame, PerGroup, PerToken, Static
    from qdit.recipe import Recipe

    spec = QuantSpec(w_group=PerChannel(), a_group=PerGroup(32), act_granularity=PerFrame())
    assert spec == QuantSpec(w_group=0, a_group=32, act_granularity="frame")
    assert (spec.w_group, spec.a_group, spec.act_granularity) == (0, 32, "frame")
    assert spec.to_dict()["act_granularity"] == "frame" and spec.to_dict()["a_group"] == 32
    assert spec.weight_granularity == PerChannel() and spec.act_group_granularity == PerGroup(32)
    assert spec.activation_granularity == PerFrame() and not spec.needs_calibration
    assert QuantSpec(act_granularity=Static()).needs_calibration
    # overrides hold spellings too, so the recipe's JSON is the one a string-spelled recipe writes
    by_value = Recipe(spec, overrides={"blocks.*": {"w_group": PerGroup(16), "act_granularity": PerToken()}})
    by_name = Recipe(
        QuantSpec(w_group=0, a_group=32, act_granularity="frame"),
        overrides={"blocks.*": {"w_group": 16, "act_granularity": "token"}},
    )
    assert by_value == by_name and by_value.to_json() == by_name.to_json()
    assert Recipe.from_json(by_value.to_json()) == by_value
    with pytest.raises(RecipeError, match=r"^a_group must be an integer >= 0 \(0 = one group per row\), got -2$"):
        QuantSpec(a_group=-2)
    with pytest.raises(RecipeError, match=r"^act_granularity must be one of token, sample, frame, static, got 'row'$"):
        QuantSpec(act_granularity="row")
    # the search's config too
    from qdit.quant.rules import PerSample
    from qdit.search.driver import SearchConfig

    assert SearchConfig(act_granularity=PerSample()) == SearchConfig(act_granularity="sample")
    with pytest.raises(QditError, match=r"^act_granularity must be one of token, sample, frame, static, got 'x'$"):
        SearchConfig(act_granularity="x")
