"""Config: strict keys with suggestions, types, overrides, method params."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from strop.config import load_config
from strop.errors import StropError

BASE = {"data": {"train": "x.jsonl"}}


def _err(raw=None, overrides=(), path=None) -> str:
    with pytest.raises(StropError) as exc:
        load_config(path, list(overrides), raw=raw if raw is not None else dict(BASE))
    return str(exc.value)


def test_unknown_key_names_it_and_suggests():
    msg = _err(overrides=["train.lr_rate=1e-4"])
    assert "unknown key 'train.lr_rate'" in msg and "did you mean 'train.lr'" in msg
    assert "did you mean 'train'" in _err(raw={**BASE, "trian": {}})


def test_wrong_type_names_key_and_value():
    msg = _err(overrides=["train.batch_size=many"])
    assert "train.batch_size" in msg and "many" in msg


def test_overrides_parse_yaml_values():
    cfg = load_config(
        None,
        [
            "train.lr=1e-4",
            "data.packing=false",
            "method.r=8",
            "method.name=lora",
            "train.adam_betas=[0.9, 0.95]",
        ],
        raw=dict(BASE),
    )
    assert cfg.train.lr == 1e-4 and cfg.data.packing is False
    assert cfg.train.adam_betas == (0.9, 0.95)
    assert type(cfg.method).__name__ == "LoraMethod" and cfg.method.r == 8


def test_method_params_are_strict_per_method():
    assert "did you mean 'lora'" in _err(overrides=["method.name=lorra"])
    msg = _err(overrides=["method.name=lora", "method.rank=8"])
    assert "method (lora)" in msg and "unknown key 'rank'" in msg and "did you mean 'r'" in msg
    assert "unknown key 'r'" in _err(overrides=["method.name=full", "method.r=8"])


def test_missing_train_data_and_bad_yaml(tmp_path):
    assert "data.train" in _err(raw={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1,\n")
    assert f"{bad}:" in _err(path=bad)
    assert "config file not found" in _err(path=tmp_path / "nope.yaml")


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {train: x.jsonl}\ntrain: {epoch: 3}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "strop.cli", "train", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        "unknown key 'train.epoch'" in proc.stderr and "did you mean 'train.epochs'" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_every_stage_has_an_objective():
    from typing import get_args

    from strop.config.schema import Config
    from strop.train import objectives

    stages = get_args(Config.model_fields["stage"].annotation)
    assert set(stages) == set(objectives.OBJECTIVES)


def test_method_is_parsed_once_into_a_typed_object_that_knows_its_facts():
    cfg = load_config(None, ["method.name=ptuning", "method.deep=true"], raw=dict(BASE))
    m = cfg.method
    assert m.name == "ptuning" and m.uses_virtual_tokens and m.kv_prefix and m.is_adapter
    assert "not a weight change" in m.not_mergeable and "grpo" in m.refused_stages
    full = load_config(None, ["method.name=full"], raw=dict(BASE)).method
    assert not full.is_adapter and full.not_mergeable is None and not full.uses_virtual_tokens
    assert "method.name: required" in _err(raw={**BASE, "method": {"r": 8}})


@pytest.mark.parametrize("section", ["dpo", "simpo", "orpo", "kto", "rm", "grpo", "ppo"])
def test_a_section_of_another_stage_is_refused_naming_key_and_stage(section):
    msg = _err(overrides=["stage=sft", f"{section}.beta=5"])
    assert f"{section}: this section is read only by stage {section}" in msg
    assert "stage is sft" in msg
    # with its own stage the section is read (and filled with defaults when absent)
    raw = {**BASE, "stage": "dpo"}
    assert load_config(None, raw=raw).dpo.beta == 0.1 and load_config(None, raw=raw).kto is None


def test_packing_set_for_a_stage_that_does_not_pack_is_refused():
    msg = _err(overrides=["stage=dpo", "data.packing=true"])
    assert "data.packing: stage dpo" in msg and "does not pack" in msg
    assert load_config(None, ["stage=dpo", "data.packing=false"], raw=dict(BASE)).stage == "dpo"


def test_the_resolved_config_reads_back_to_the_same_config():
    from strop.config.load import dump_config

    for overrides in (["stage=dpo"], ["stage=pt", "method.name=full"], ["stage=kto"]):
        cfg = load_config(None, overrides, raw=dict(BASE))
        again = load_config(None, raw=yaml.safe_load(dump_config(cfg)))
        assert again.model_dump() == cfg.model_dump()


def test_duplicate_yaml_keys_directory_paths_and_bad_overrides(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("data: {train: x.jsonl}\nmodel:\n  name: tiny-llama\n  name: tiny-qwen2\n")
    msg = _err(path=dup)
    assert f"{dup}:4" in msg and "duplicate key 'name' (first at line 3)" in msg
    assert "is a directory" in _err(path=tmp_path)
    assert "the key before '=' is empty" in _err(overrides=["=5"])
    # an override's mistake is attributed to the command line, not to the YAML file
    good = tmp_path / "good.yaml"
    good.write_text("data: {train: x.jsonl}\n")
    msg = _err(path=good, overrides=["train.lr=abc"])
    assert msg.startswith("command line:") and "train.lr" in msg and str(good) not in msg


def _is_train_config(path: Path) -> bool:
    tree = yaml.safe_load(path.read_text()) or {}
    return isinstance(tree, dict) and "train" in tree and "tasks" not in tree


EXAMPLES = Path(__file__).parents[2] / "examples"
TRAIN_EXAMPLES = sorted(p for p in EXAMPLES.rglob("*.yaml") if _is_train_config(p))


@pytest.mark.parametrize("path", TRAIN_EXAMPLES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_training_configs_validate(path):
    assert load_config(path).train.output_dir.startswith("runs/")
