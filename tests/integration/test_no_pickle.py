"""Nothing strop reads back from disk runs code (issue 18, item 4).

A pickle whose ``__reduce__`` writes a marker file is planted in each file a resume reads
(RNG state, DCP shards, DCP's pickled index) and in merge / eval / adapter inputs. The load
must either work from the safe data beside it or fail with one sentence naming the file; the
marker must never appear.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from strop.config import load_config
from strop.errors import StropError
from strop.merge.config import load_merge_config
from strop.merge.run import run_merge
from strop.train.loop import train
from tests.helpers import strop_error, tiny_config, write_chat_jsonl


class Payload:
    """Unpickling this writes ``path``: what an attacker's code would do, harmlessly."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('code ran')",))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a planted pickle was executed"


def plant_torch(path: Path, marker: Path) -> None:
    torch.save(Payload(marker), path)


def plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


def test_the_payload_is_live(tmp_path):
    """The control: the same bytes do run code when unpickled the unsafe way."""
    live = tmp_path / "live"
    plant_torch(tmp_path / "x.pt", live)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert live.exists()
    live.unlink()
    pickle.loads(pickle.dumps(Payload(live)))
    assert live.exists()


def _config(run_dir: Path, data: Path, steps: int) -> dict:
    train_section = {"max_steps": steps, "save_every": 1, "keep_last": 2}
    return tiny_config(run_dir, data, train=train_section)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-step full fine-tune with checkpoints step-1 and step-2 (data beside it)."""
    tmp = tmp_path_factory.mktemp("no_pickle")
    data = write_chat_jsonl(tmp / "chat.jsonl", n=16)
    train(load_config(None, raw=_config(tmp / "run", data, 2)))
    return tmp / "run"


def _resume(run: Path, tmp_path: Path) -> Path:
    """Continue the copy of ``run`` in tmp_path to step 3 from its newest checkpoint (step-2)."""
    out = tmp_path / "run"
    train(load_config(None, raw=_config(out, run.parent / "chat.jsonl", 3)))
    return out


def _copy_run(run: Path, tmp_path: Path) -> Path:
    """The run, moved to tmp_path/run (its recorded output_dir too) without its final/."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    shutil.rmtree(dst / "final")
    saved = dst / "config.yaml"
    saved.write_text(saved.read_text().replace(str(run), str(dst)))
    return dst


def test_a_checkpoint_holds_no_pickle_strop_reads(run):
    ckpt = run / "checkpoints" / "step-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {"dcp.json", "state.json", "trainer.json", "rng-rank0.pt", "COMMITTED"} <= names
    for name in ("dcp.json", "state.json", "trainer.json"):
        json.loads((ckpt / name).read_text())
    rng = torch.load(ckpt / "rng-rank0.pt", weights_only=True)  # plain data and tensors
    assert rng["torch"].dtype == torch.uint8 and len(rng["python"][1]) == 625


def test_a_payload_in_dcps_pickled_index_is_never_read(run, tmp_path, marker):
    dst = _copy_run(run, tmp_path)
    plant_pickle(dst / "checkpoints" / "step-2" / ".metadata", marker)
    out = _resume(run, tmp_path)
    assert (out / "final" / "model.safetensors").exists()
    assert json.loads((out / "checkpoints" / "step-3" / "trainer.json").read_text())["step"] == 3


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("rng-rank0.pt", "not an RNG state strop wrote"),
        ("__0_0.distcp", "cannot read the checkpoint's tensors"),
    ],
)
def test_a_payload_in_a_checkpoint_file_fails_with_a_sentence(run, tmp_path, marker, name, message):
    dst = _copy_run(run, tmp_path)
    plant_torch(dst / "checkpoints" / "step-2" / name, marker)
    with pytest.raises(StropError, match=message) as err:
        _resume(run, tmp_path)
    assert "step-2" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("dcp.json", None, "older strop"),  # a checkpoint whose only index is the pickle
        ("dcp.json", b"\x80\x04garbage", "not a checkpoint index strop wrote"),
        ("state.json", b"\x80\x04garbage", "not valid JSON"),
        ("trainer.json", b"[]", "not a trainer state"),
    ],
)
def test_a_damaged_json_file_fails_with_a_sentence(run, tmp_path, name, content, message):
    dst = _copy_run(run, tmp_path)
    path = dst / "checkpoints" / "step-2" / name
    path.unlink() if content is None else path.write_bytes(content)
    with pytest.raises(StropError, match=message):
        _resume(run, tmp_path)


def test_an_index_pointing_outside_the_checkpoint_is_refused(run, tmp_path):
    dst = _copy_run(run, tmp_path)
    path = dst / "checkpoints" / "step-2" / "dcp.json"
    index = json.loads(path.read_text())
    index["storage"][0][3] = "../step-1/__0_0.distcp"
    path.write_text(json.dumps(index))
    with pytest.raises(StropError, match="outside the checkpoint dir"):
        _resume(run, tmp_path)


# ---- merge inputs --------------------------------------------------------------------------


def _merge(tmp_path: Path, **tree) -> Path:
    tree["output"] = {"dir": str(tmp_path / "merged"), "overwrite": True}
    cfg, _, _ = load_merge_config(None, raw=tree)
    return run_merge(cfg, log=lambda m: None)


def test_checkpoint_average_never_reads_the_pickled_index(run, tmp_path, marker):
    dst = _copy_run(run, tmp_path)
    for step in (1, 2):
        plant_pickle(dst / "checkpoints" / f"step-{step}" / ".metadata", marker)
    out = _merge(tmp_path, method="checkpoint_average", models=[str(dst)], params={"last": 1})
    got = load_file(out / "model.safetensors")
    want = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_checkpoint_average_refuses_a_planted_shard(run, tmp_path, marker):
    dst = _copy_run(run, tmp_path)
    plant_torch(dst / "checkpoints" / "step-2" / "__0_0.distcp", marker)
    with pytest.raises(StropError, match="cannot read"):
        _merge(tmp_path, method="checkpoint_average", models=[str(dst)], params={"last": 1})


def test_merge_refuses_pickled_weights(tiny_llama_dir, tmp_path, marker):
    bin_only = tmp_path / "bin-only"
    shutil.copytree(tiny_llama_dir, bin_only)
    (bin_only / "model.safetensors").unlink()
    plant_torch(bin_only / "pytorch_model.bin", marker)
    with pytest.raises(StropError, match="reads safetensors only"):
        _merge(tmp_path, method="linear", models=[str(tiny_llama_dir), str(bin_only)])
    disguised = tmp_path / "disguised"
    shutil.copytree(tiny_llama_dir, disguised)
    plant_torch(disguised / "model.safetensors", marker)
    with pytest.raises(StropError, match="model.safetensors is not a readable safetensors file"):
        _merge(tmp_path, method="linear", models=[str(tiny_llama_dir), str(disguised)])


def _lora_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    peft_model.save_pretrained(out)
    return out


def test_merge_refuses_a_pickled_adapter(tiny_llama_dir, tmp_path, marker):
    adapter = _lora_adapter(tiny_llama_dir, tmp_path / "adapter")
    plant_torch(adapter / "adapter_model.safetensors", marker)
    with pytest.raises(StropError, match="adapter_model.safetensors is not a readable"):
        _merge(tmp_path, method="linear", models=[str(tiny_llama_dir), str(adapter)])


# ---- eval / chat / reward models: strop.models.load ------------------------------------------


def test_loading_pickled_model_or_adapter_weights_runs_no_code(tiny_llama_dir, tmp_path, marker):
    """transformers and peft read .bin files with torch.load(weights_only=True): refused."""
    from strop.models.load import load_model

    bin_only = tmp_path / "bin-only"
    shutil.copytree(tiny_llama_dir, bin_only)
    (bin_only / "model.safetensors").unlink()
    plant_torch(bin_only / "pytorch_model.bin", marker)
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the marker is the point
        load_model(str(bin_only), "fp32")
    adapter = _lora_adapter(tiny_llama_dir, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    plant_torch(adapter / "adapter_model.bin", marker)
    with pytest.raises(Exception):  # noqa: B017
        load_model(str(tiny_llama_dir), "fp32", adapter=str(adapter))


def test_remote_code_in_a_model_dir_is_not_run(tiny_llama_dir, tmp_path, marker):
    from strop.models.load import load_model

    model_dir = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    (model_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('code ran')\n"
        "from transformers import LlamaConfig as Config, LlamaForCausalLM as Model\n"
    )
    with contextlib.suppress(Exception):  # refusing is fine too; running evil.py is not
        load_model(str(model_dir), "fp32")


def test_state_dict_round_trips_through_json_exactly():
    from strop.train.checkpoint import join_tensors, split_tensors

    t = torch.arange(3.0)
    state = {
        "optim": {
            "state": {"w": {"step": torch.tensor(3.0), "exp_avg": t}},
            "param_groups": [{"lr": 1e-3 / 3, "betas": (0.9, 0.999), "eps": float("inf")}],
        },
        "odd": {1: "int key", ("a", 2): None, "__x__": [True, 2**40]},
    }
    tensors: dict[str, torch.Tensor] = {}
    tree = json.loads(json.dumps(split_tensors(state, tensors)))
    assert set(tensors) == {"optim.state.w.step", "optim.state.w.exp_avg"}
    assert join_tensors(tree, tensors, Path(".")) == state
    with pytest.raises(StropError, match="which this model or optimizer lacks"):
        join_tensors(tree, {}, Path("ckpt"))


def test_a_truncated_merge_input_is_one_sentence_exit_2(tiny_llama_dir, tmp_path):
    """An interrupted copy: the CLI names the file, exit 2, no traceback (issue 18.10)."""

    import yaml

    cut = tmp_path / "cut"
    shutil.copytree(tiny_llama_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    cfg = tmp_path / "merge.yaml"
    tree = {"method": "linear", "models": [str(tiny_llama_dir), str(cut)]}
    cfg.write_text(yaml.safe_dump({**tree, "output": {"dir": str(tmp_path / "out")}}))
    line = strop_error(["merge", str(cfg)], 2)
    assert f"{weights} is not a readable safetensors file" in line and "truncated" in line
    assert not (tmp_path / "out").exists()


def test_pickled_model_or_adapter_weights_are_refused_before_any_load(
    tiny_llama_dir, tmp_path, marker
):
    """A model dir or adapter dir whose weights are pickles (.bin) is refused with a sentence
    before transformers or peft open anything, however harmless or hostile the file."""
    from strop.models.load import apply_adapter, load_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    plant_torch(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(StropError, match=r"no \.safetensors weights \(it has pytorch_model\.bin"):
        load_model(str(model_dir))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    plant_torch(adapter / "adapter_model.bin", marker)
    model, _, _ = load_model(str(tiny_llama_dir))
    with pytest.raises(StropError, match="loads adapter weights from safetensors only"):
        apply_adapter(model, adapter)
