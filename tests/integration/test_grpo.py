"""Stage grpo end to end on tiny-llama with a deterministic reward: the zero-loss anchor,
batch x accum equivalence, learning, exact resume inside a num_iterations cycle, golden
trajectories, clear refusals."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from strop.config import load_config
from strop.errors import StropError
from strop.train.loop import FAULT_ENV, train
from tests.helpers import WORDS, check_golden, tiny_config

GOLDEN = Path(__file__).parent.parent / "golden"
LORA = {"name": "lora", "r": 4, "alpha": 8}
ALPHA = "tests.integration.test_grpo:letter_share"


def letter_share(prompts, completions, **kw):
    """Deterministic reward: the share of lowercase ASCII letters among the characters."""
    return [sum("a" <= ch <= "z" for ch in c) / max(len(c), 1) for c in completions]


def write_prompts(path: Path, n: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
            f.write(json.dumps({"prompt": words, "answer": str(i)}) + "\n")
    return path


def _raw(tmp_path, n=16, **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_prompts(tmp_path / "prompts.jsonl", n=n)
    grpo = {"group_size": 4, "max_new_tokens": 12, "beta": 0.0, "rewards": [ALPHA]}
    grpo.update(sections.pop("grpo", {}))
    train_opts = {"max_steps": 3, "batch_size": 2, "lr": 1e-2, **sections.pop("train", {})}
    return tiny_config(
        tmp_path / "run",
        data,
        stage="grpo",
        grpo=grpo,
        train=train_opts,
        **{"method": {"name": "full"}, **sections},
    )


def _cfg(tmp_path, **sections):
    return load_config(None, raw=_raw(tmp_path, **sections))


def test_first_step_loss_is_zero_but_gradient_is_not(tmp_path):
    hist = train(_cfg(tmp_path, train={"max_steps": 2})).history
    assert hist[0]["loss"] == pytest.approx(0.0, abs=1e-7)
    assert hist[0]["grad_norm"] > 1e-4
    for key in (
        "reward",
        "reward/letter_share",
        "kl",
        "clip_fraction",
        "entropy",
        "completion_len",
        "zero_adv_groups",
        "time/generate",
    ):
        assert key in hist[0], key
    assert hist[0]["clip_fraction"] == 0.0 and hist[0]["kl"] == 0.0


def test_batch_times_accum_equivalence(tmp_path):
    runs = {}
    for bs, acc in ((4, 1), (1, 4), (2, 2)):
        cfg = _cfg(
            tmp_path / f"{bs}x{acc}",
            grpo={"beta": 0.1, "aggregation": "token_mean"},
            train={"batch_size": bs, "grad_accum": acc},
        )
        runs[bs] = [(h["loss"], h["grad_norm"], h["kl"], h["reward"]) for h in train(cfg).history]
    for other in (1, 2):
        for a, b in zip(runs[4], runs[other], strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_reward_rises(tmp_path):
    cfg = _cfg(
        tmp_path,
        grpo={"group_size": 8, "beta": 0.02, "temperature": 1.0},
        train={"max_steps": 12, "lr": 1e-2, "batch_size": 4},
    )
    hist = train(cfg).history  # measured: 0.08 -> 0.42, KL 0.6 at step 12
    first = sum(h["reward"] for h in hist[:3]) / 3
    last = sum(h["reward"] for h in hist[-3:]) / 3
    assert last > first + 0.1, (first, last)
    assert hist[-1]["kl"] > 0


def has_e(prompts, completions, **kw):
    """A binary reward, so that small groups often score all alike."""
    return [float("e" in c) for c in completions]


def test_dynamic_sampling_refills_dropped_groups_from_further_prompts(tmp_path):
    def run(refill, name):
        cfg = _cfg(
            tmp_path / name,
            n=64,
            train={"max_steps": 4, "batch_size": 4},
            grpo={
                "group_size": 2,
                "rewards": ["tests.integration.test_grpo:has_e"],
                "dynamic_sampling": True,
                "refill_rounds": refill,
            },
        )
        return train(cfg).history

    plain, refilled = run(0, "plain"), run(6, "refill")
    assert "sampling_rounds" not in plain[0]
    assert max(h["sampling_rounds"] for h in refilled) > 1  # groups were dropped and replaced
    for h in refilled:  # never more groups than the batch asks for, each with signal
        assert h["groups_trained"] <= 4
        assert h["sampling_rounds"] == 1 or h["groups_trained"] == 4 or h["sampling_rounds"] == 7
    # the first round is the same draw as without refill (same seed, same prompts)
    assert refilled[0]["time/generate"] > 0 and plain[0]["zero_adv_groups"] > 0


def _strop_train(cfg_path, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "strop.cli", "train", str(cfg_path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def kill_and_resume(tmp_path, make_raw, total: int, kill_at: int) -> tuple[dict, dict, Path, Path]:
    """Run a config straight through, and again with a real SIGTERM after step ``kill_at``
    followed by a resume; returns both runs' per-step metrics and run dirs.
    ``make_raw(dir, train_overrides)`` builds the raw config."""
    configs = {}
    for name in ("straight", "killed"):
        train_opts = {
            "max_steps": total,
            "save_every": 1,
            "keep_last": 2,
            "output_dir": str(tmp_path / name / "run"),
        }
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(make_raw(tmp_path / name, train_opts)))
    straight = _strop_train(configs["straight"])
    assert straight.returncode == 0, straight.stderr
    killed = _strop_train(configs["killed"], {FAULT_ENV: str(kill_at)})
    assert killed.returncode == 128 + 15, killed.stderr
    resumed = _strop_train(configs["killed"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout

    def metrics(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if "loss" in r}

    a, b = tmp_path / "straight" / "run", tmp_path / "killed" / "run"
    return metrics(a), metrics(b), a, b


def assert_same_files(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        wa, wb = load_file(a / "final" / name), load_file(b / "final" / name)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


def test_kill_and_resume_inside_an_iteration_cycle_is_bit_identical(tmp_path):
    # num_iterations 2: step 3 reuses step 2's rollouts
    ma, mb, a, b = kill_and_resume(
        tmp_path,
        lambda d, train_opts: _raw(
            d,
            method={"name": "lora", "r": 4, "dropout": 0.1},
            grpo={"num_iterations": 2, "beta": 0.05},
            train=train_opts,
        ),
        total=6,
        kill_at=3,
    )
    for step in ma:
        for k in ("loss", "grad_norm", "tokens", "reward", "kl", "clip_fraction"):
            assert ma[step][k] == mb[step][k], (step, k)
    assert ma[4]["clip_fraction"] > 0 or ma[4]["loss"] != 0  # iteration 2: ratios != 1
    assert_same_files(a, b, ("adapter_model.safetensors",))


GOLDEN_CASES = {
    "grpo-full": (None, {"beta": 0.04}),
    "grpo-lora-dapo": (
        {**LORA, "init": "gaussian"},
        {
            "beta": 0.02,
            "aggregation": "token_mean",
            "num_iterations": 2,
            "epsilon_high": 0.28,
            "temperature": 0.9,
            "top_p": 0.95,
        },
    ),
    "grpo-full-dr": (None, {"aggregation": "dr_grpo", "scale_rewards": False}),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_trajectory(tmp_path, case):
    method, grpo = GOLDEN_CASES[case]
    cfg = _cfg(
        tmp_path,
        method=method or {"name": "full"},
        grpo=grpo,
        train={
            "max_steps": 12,
            "batch_size": 2,
            "grad_accum": 2,
            "warmup": 2,
            "seed": 3,
            "lr": 3e-3,
        },
    )
    history = train(cfg).history
    keys = ("loss", "grad_norm", "tokens", "reward", "kl")
    got = [{k: h[k] for k in ("step", *keys)} for h in history]
    assert len(got) == 12
    check_golden(case, got, ("loss", "grad_norm", "kl", "reward"))


def test_refusals(tmp_path):
    with pytest.raises(StropError, match="unknown reward 'nope'"):
        train(_cfg(tmp_path / "a", grpo={"rewards": ["nope"]}))
    with pytest.raises(Exception, match="grpo.rewards: stage grpo needs at least one"):
        _cfg(tmp_path / "b", grpo={"rewards": []})
    with pytest.raises(StropError, match="adapter_off needs an adapter method"):
        train(_cfg(tmp_path / "c", grpo={"beta": 0.1, "reference": "adapter_off"}))
    from tests.helpers import write_chat_jsonl

    cfg = _cfg(tmp_path / "d")
    cfg.data.train = str(write_chat_jsonl(tmp_path / "chat.jsonl"))
    with pytest.raises(StropError, match="this stage trains on prompt rows"):
        train(cfg)


def test_held_out_prompts_are_scored_greedily(tmp_path):
    cfg = _cfg(tmp_path, data={"eval": 0.25}, train={"max_steps": 2, "eval_every": 1})
    res = train(cfg)
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_reward" in r]
    assert len(evals) == 2 and evals[0]["eval_loss"] == -evals[0]["eval_reward"]
    assert "eval_reward/letter_share" in evals[0]
