"""Merge config: per-tensor values (constants, layer gradients, pattern rules), overrides into
lists, and every example config under examples/merge validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from strop.errors import StropError
from strop.merge.config import Rule, load_merge_config, set_dotted
from strop.merge.params import ParamResolver, interpolate, layer_position, resolve_value

ROOT = Path(__file__).resolve().parents[2]


def test_layer_position_spans_embeddings_to_head():
    assert layer_position("model.embed_tokens.weight", 4) == 0.0
    assert layer_position("model.layers.0.mlp.up_proj.weight", 4) == 0.0
    assert layer_position("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert layer_position("model.layers.3.self_attn.q_proj.weight", 4) == 1.0
    assert layer_position("model.norm.weight", 4) == 1.0
    assert layer_position("lm_head.weight", 4) == 1.0


def test_gradient_interpolates_between_evenly_spaced_anchors():
    assert interpolate([0.0, 1.0], 0.25) == 0.25
    assert interpolate([0.0, 1.0, 0.0], 0.5) == 1.0
    assert interpolate([0.0, 1.0, 0.0], 0.75) == 0.5
    assert interpolate([0.3], 0.9) == 0.3
    # layer 1 of 3 sits at x = 0.5
    assert resolve_value([0.2, 0.6], "model.layers.1.mlp.up_proj.weight", 3, "k") == 0.4


def test_rules_first_match_wins_and_a_missing_default_is_an_error():
    rules = [Rule(pattern="*mlp*", value=0.1), Rule(pattern="*layers.1.*", value=0.2)]
    assert resolve_value(rules, "model.layers.1.mlp.up_proj.weight", 2, "k") == 0.1
    assert resolve_value(rules, "model.layers.1.self_attn.q_proj.weight", 2, "k") == 0.2
    with pytest.raises(StropError, match="models.0.weight: no rule matches tensor 'lm_head"):
        resolve_value(rules, "lm_head.weight", 2, "models.0.weight")


def test_resolver_gives_every_tensor_its_weights_densities_and_t():
    cfg, _, _ = load_merge_config(
        None,
        raw={
            "method": "ties",
            "base": "b",
            "models": [
                {"model": "x", "weight": [0.0, 1.0], "density": 0.5},
                {"model": "y", "density": [{"pattern": "*mlp*", "value": 0.2}, {"value": 0.9}]},
            ],
        },
    )
    p = ParamResolver(cfg, n_layers=3)("model.layers.2.mlp.down_proj.weight")
    assert p.weights == (1.0, 1.0) and p.densities == (0.5, 0.2)
    p = ParamResolver(cfg, n_layers=3)("model.layers.1.self_attn.o_proj.weight")
    assert p.weights == (0.5, 1.0) and p.densities == (0.5, 0.9)


def test_density_out_of_range_is_named():
    cfg, _, _ = load_merge_config(
        None, raw={"method": "ties", "base": "b", "models": [{"model": "x", "density": 1.5}]}
    )
    with pytest.raises(
        StropError, match=r"models.0.density: 1.5 for tensor 'w' is not in \[0, 1\]"
    ):
        ParamResolver(cfg, 1)("w")


def test_overrides_reach_into_the_models_list():
    tree = {"method": "linear", "models": ["a", {"model": "b", "weight": 2}]}
    cfg, tree, _ = load_merge_config(None, ["models.0.weight=0.25", "params.normalize=false"], tree)
    assert cfg.models[0].weight == 0.25 and cfg.models[0].model == "a"
    assert cfg.params.normalize is False
    with pytest.raises(StropError, match="models.5.weight: models.5 is not a list index"):
        set_dotted(tree, "models.5.weight", 1)


def test_default_names_come_from_the_paths():
    cfg, _, _ = load_merge_config(
        None, raw={"method": "linear", "models": ["runs/events-lora/final", "runs/b/final-merged"]}
    )
    assert [m.name for m in cfg.models] == ["events-lora", "b"]
    with pytest.raises(StropError, match="duplicate name"):
        load_merge_config(None, raw={"method": "linear", "models": ["x/final", "x"]})


def test_search_section_is_checked():
    base = {"method": "linear", "models": ["a", "b"]}
    bad = {"space": {"models.0.weight": [0, 1]}, "objective": "acc", "tasks": []}
    with pytest.raises(StropError, match="give either tasks or eval_config"):
        load_merge_config(None, raw={**base, "search": bad})
    bad = {"space": {"models.0.weight": [0, 1, 2]}, "strategy": "random", "objective": "t/m"}
    with pytest.raises(StropError, match=r"random search takes \[low, high\]"):
        load_merge_config(None, raw={**base, "search": {**bad, "eval_config": "e.yaml"}})


def test_random_candidates_are_seeded_and_in_range():
    from strop.merge.config import SearchSection
    from strop.merge.search import candidates

    s = SearchSection(
        strategy="random",
        space={"params.t": [0.2, 0.4]},
        trials=5,
        seed=3,
        objective="a/b",
        eval_config="x",
    )
    a, b = candidates(s), candidates(s)
    assert a == b and len(a) == 5 and all(0.2 <= c["params.t"] <= 0.4 for c in a)
    grid = SearchSection(space={"a": [1, 2], "b": [3, 4, 5]}, objective="a/b", eval_config="x")
    assert len(candidates(grid)) == 6


@pytest.mark.parametrize(
    "path",
    sorted(
        p for p in (ROOT / "examples" / "merge").glob("*.yaml") if not p.name.startswith("eval")
    ),
)
def test_example_configs_validate(path):
    cfg, _, _ = load_merge_config(path)
    assert cfg.output.dir.startswith("runs/")
