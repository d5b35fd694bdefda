"""train.optimizer: bitsandbytes' 8-bit and paged AdamW, checked on CPU against torch's AdamW,
through the loop, and across an exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from strop.config import load_config
from strop.errors import StropError
from strop.train.loop import train
from strop.train.optim import build_optimizer
from tests.helpers import tiny_config, write_chat_jsonl


def _train_cfg(optimizer: str, tmp_path):
    raw = tiny_config(tmp_path, tmp_path / "x.jsonl", train={"optimizer": optimizer, "lr": 1e-2})
    return load_config(None, raw=raw).train


def _steps(optimizer: str, tmp_path, n: int = 5) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 64))
    opt = build_optimizer(model, _train_cfg(optimizer, tmp_path))
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(16, 64, generator=g)
        ((model(x) - x) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), opt


def test_paged_32bit_on_cpu_is_adamw(tmp_path, capsys):
    import bitsandbytes as bnb

    ref, opt_ref = _steps("adamw", tmp_path)
    got, opt = _steps("paged_adamw_32bit", tmp_path)
    assert isinstance(opt_ref, torch.optim.AdamW)
    assert isinstance(opt, bnb.optim.PagedAdamW32bit)
    assert "paging needs CUDA; on CPU it runs unpaged" in capsys.readouterr().out
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)  # same maths, unpaged


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_moments_track_adamw(tmp_path, name):
    ref, _ = _steps("adamw", tmp_path)
    got, opt = _steps(name, tmp_path)
    big = opt.param_groups[0]["params"][0]  # the 128x64 weight: >= 4096 elements
    assert opt.state[big]["state1"].dtype == torch.uint8  # moments really are 8-bit
    moved = (ref - _steps("adamw", tmp_path, n=0)[0]).abs().mean()
    # Quantised moments: the same direction of travel, a small error against its size
    # (measured about 1% of the mean update after 5 steps).
    assert (got - ref).abs().mean() < 0.1 * moved


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_loop_trains_and_resumes_exactly(tmp_path, name):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)

    def run(out, steps, save_every=0):
        raw = tiny_config(
            out,
            data,
            method={"name": "lora", "r": 4, "targets": ["q_proj", "v_proj"]},
            train={
                "optimizer": name,
                "max_steps": steps,
                "lr": 5e-2,
                "schedule": "constant",  # the schedule must not depend on max_steps here
                "save_every": save_every,
            },
        )
        return train(load_config(None, raw=raw))

    whole = run(tmp_path / "whole", 6)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in whole.history)
    run(tmp_path / "split", 3, save_every=3)
    resumed = run(tmp_path / "split", 6)  # resume: auto picks up checkpoints/step-3
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history[3:]]
    a = load_file(whole.final_dir / "adapter_model.safetensors")
    b = load_file(resumed.final_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp2_is_refused_naming_the_key(tmp_path):
    raw = tiny_config(
        tmp_path, tmp_path / "x.jsonl", train={"optimizer": "adamw_8bit", "distributed": "fsdp2"}
    )
    with pytest.raises(StropError, match="train.optimizer: adamw_8bit .* FSDP2"):
        load_config(None, raw=raw)


def test_unknown_optimizer_is_a_config_error(tmp_path):
    raw = tiny_config(tmp_path, tmp_path / "x.jsonl", train={"optimizer": "adam8bit"})
    with pytest.raises(StropError, match="train.optimizer"):
        load_config(None, raw=raw)
