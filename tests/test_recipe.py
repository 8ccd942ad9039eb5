from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qdit.errors import QditError
from qdit.recipe import ACT_GRANULARITIES, BASELINES, QuantSpec, Recipe, RecipeError

LAYERS = {
    **{f"blocks.{i}.attn.qkv": 64 for i in range(2)},
    **{f"blocks.{i}.attn.proj": 64 for i in range(2)},
    **{f"blocks.{i}.mlp.fc1": 64 for i in range(2)},
    **{f"blocks.{i}.mlp.fc2": 256 for i in range(2)},
    **{f"blocks.{i}.adaLN_modulation.1": 64 for i in range(2)},
    "final_layer.linear": 64,
}
GROUPS = {
    "default": [n for n in LAYERS if "adaLN" not in n and "final" not in n],
    "adaln": [n for n in LAYERS if "adaLN" in n],
    "all": list(LAYERS),
}


def test_json_round_trip(tmp_path: Path) -> None:
    recipe = Recipe(
        default=QuantSpec(w_bits=4, a_bits=8, w_group=32, a_group=32, act_granularity="sample"),
        overrides={
            "blocks.0.attn.qkv": {"w_group": 16, "a_group": 64},
            "blocks.*.mlp.fc2": QuantSpec(w_bits=6),
        },
        include=["adaln"],
        exclude=["blocks.1.*"],
    )
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe
    assert json.loads(recipe.to_json())["version"] == 1
    path = tmp_path / "r.json"
    recipe.save(path)
    assert Recipe.load(path) == recipe
    for name in BASELINES:
        b = Recipe.baseline(name, w_bits=6)
        assert Recipe.from_dict(b.to_dict()) == b and b.default.w_bits == 6


def test_frame_granularity_round_trips_and_needs_no_calibration() -> None:
    assert "frame" in ACT_GRANULARITIES
    spec = QuantSpec(4, 8, 32, 32, "frame")
    assert not spec.needs_calibration and spec.label() == "W4A8 g32/32 frame rtn"
    recipe = Recipe(spec, overrides={"blocks.1.*": {"act_granularity": "sample"}})
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe and again.default.act_granularity == "frame"
    assert again.spec_for("blocks.1.mlp.fc1").act_granularity == "sample"


def _digest(recipe: Recipe) -> str:  # the recipe checksum of qdit.io.integrity (sha256 of canonical JSON)
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_existing_recipes_keep_their_checksums() -> None:
    # digests taken before the frame granularity existed: adding it changed no recipe's JSON
    assert _digest(Recipe()) == "178af0a168de05e3281d15c3a0963495d6f1f1c8c2047194e5f014f1016f5e4c"
    sample = Recipe(QuantSpec(4, 8, 128, 128, "sample"), overrides={"blocks.0.*": {"a_group": 32}})
    assert _digest(sample) == "20f91847fccd3cc1e1d3e73a91dfdb893e73278fda3f99aff6c75510b165a96d"


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(w_bits=9), "w_bits must be an integer in 2..8, got 9"),
        (dict(w_bits=1), "w_bits must be an integer in 2..8"),
        (dict(a_bits=16), "a_bits must be an integer in 2..8"),
        (dict(w_bits=4.0), "w_bits must be an integer"),
        (dict(w_group=-1), "w_group must be an integer >= 0"),
        (dict(act_granularity="tensor"), "act_granularity must be one of token, sample, frame, static"),
        (dict(weight_method="awq"), "weight_method must be one of rtn, mse, gptq"),
        (dict(smooth_alpha=1.5), "smooth_alpha"),
    ],
)
def test_spec_validation(fields: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        QuantSpec(**fields)


def test_errors_are_qdit_and_value_errors() -> None:
    with pytest.raises(QditError):
        QuantSpec(w_bits=9)
    with pytest.raises(ValueError):
        QuantSpec(w_bits=9)


def test_group_must_divide_width_names_the_layer() -> None:
    recipe = Recipe(QuantSpec(w_group=48, a_group=48))
    with pytest.raises(
        RecipeError, match=r"layer blocks\.0\.attn\.qkv: weight group 48 does not divide its input width 64"
    ):
        recipe.resolve(LAYERS, GROUPS)
    recipe = Recipe(QuantSpec(w_group=32, a_group=32), overrides={"blocks.1.mlp.fc2": {"a_group": 96}})
    with pytest.raises(
        RecipeError, match=r"blocks\.1\.mlp\.fc2: activation group 96 does not divide its input width 256"
    ):
        recipe.resolve(LAYERS, GROUPS)


def test_unknown_layer_suggests_close_matches() -> None:
    recipe = Recipe(QuantSpec(w_group=32, a_group=32), overrides={"blocks.0.attn.qvk": {"w_bits": 8}})
    with pytest.raises(
        RecipeError,
        match=r"'blocks\.0\.attn\.qvk' matches no quantized layer; did you mean 'blocks\.0\.attn\.qkv'",
    ):
        recipe.resolve(LAYERS, GROUPS)
    with pytest.raises(RecipeError, match="did you mean 'adaln'"):
        Recipe(QuantSpec(w_group=32, a_group=32), include=["adanl"]).resolve(LAYERS, GROUPS)
    # an override of a layer that exists but is not selected says so
    recipe = Recipe(QuantSpec(w_group=32, a_group=32), overrides={"final_layer.linear": {"w_bits": 8}})
    with pytest.raises(RecipeError, match="not quantized; add them to include"):
        recipe.resolve(LAYERS, GROUPS)
    with pytest.raises(RecipeError, match="unknown field 'w_bit'; did you mean 'w_bits'"):
        Recipe(overrides={"blocks.0.attn.qkv": {"w_bit": 8}})
    with pytest.raises(RecipeError, match="unknown field 'overides'"):
        Recipe.from_dict({"version": 1, "overides": {}})


def test_resolve_selection_and_precedence() -> None:
    recipe = Recipe(
        QuantSpec(w_group=32, a_group=32),
        overrides={
            "blocks.*.mlp.*": {"w_bits": 6},
            "blocks.1.mlp.fc2": {"w_group": 128, "a_group": 0},
            "blocks.*": {"w_bits": 3},  # later pattern wins over earlier ones; exact names win over patterns
        },
        include=["adaln"],
        exclude=["blocks.1.attn.*"],
    )
    specs = recipe.resolve(LAYERS, GROUPS)
    assert "blocks.0.adaLN_modulation.1" in specs and "final_layer.linear" not in specs
    assert "blocks.1.attn.qkv" not in specs and "blocks.0.attn.qkv" in specs
    assert specs["blocks.0.mlp.fc1"].w_bits == 3
    assert specs["blocks.1.mlp.fc2"] == QuantSpec(w_bits=3, w_group=128, a_group=0)
    assert list(specs) == [n for n in LAYERS if n in specs]  # model order
    default_only = Recipe(QuantSpec(w_group=32, a_group=32)).resolve(LAYERS, GROUPS)
    assert sorted(default_only) == sorted(GROUPS["default"])
    assert Recipe(QuantSpec(w_group=32, a_group=32)).resolve(LAYERS) == {
        n: QuantSpec(w_group=32, a_group=32) for n in LAYERS
    }  # no groups: every layer is a default layer


def test_with_groups_and_version() -> None:
    base = Recipe(QuantSpec(w_group=32, a_group=32))
    searched = base.with_groups({"blocks.0.mlp.fc2": 128, "blocks.1.attn.qkv": 16})
    specs = searched.resolve(LAYERS, GROUPS)
    assert specs["blocks.0.mlp.fc2"].w_group == specs["blocks.0.mlp.fc2"].a_group == 128
    assert specs["blocks.1.attn.qkv"].w_group == 16 and base.overrides == {}
    with pytest.raises(RecipeError, match="newer"):
        Recipe.from_dict({"version": 99})
    with pytest.raises(RecipeError, match="missing 'version'"):
        Recipe.from_dict({"default": {}})
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_json("{nope")
    with pytest.raises(RecipeError, match="unknown baseline 'gtpq'; did you mean 'gptq'"):
        Recipe.baseline("gtpq")


def test_baselines() -> None:
    rtn = Recipe.baseline("rtn").default
    assert (rtn.w_group, rtn.a_group, rtn.act_granularity, rtn.weight_method) == (0, 0, "static", "rtn")
    assert Recipe.baseline("rtn-token").default.act_granularity == "token"
    sq = Recipe.baseline("smoothquant").default
    assert sq.smooth_alpha == 0.5 and sq.needs_calibration
    gp = Recipe.baseline("gptq").default
    assert gp.weight_method == "gptq" and gp.act_granularity == "token" and gp.w_group == 0


def test_import_is_light() -> None:
    code = (
        "import sys, qdit, qdit.recipe; "
        "heavy = [m for m in ('torch', 'numpy', 'safetensors', 'scipy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert "quantize" in dir(__import__("qdit"))
