"""A full disk is one sentence, exit 1, and never a half-written artifact (issue 18, item 8).

Where the test may mount a small tmpfs (root with CAP_SYS_ADMIN), the disk really fills up:
for a checkpoint (the previous one must survive and resume), for final/ (through the CLI) and
for a merge output. Everywhere, the same cases also run with the writer made to fail with
ENOSPC midway."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from strop.config import load_config
from strop.errors import StropRuntimeError, disk_full
from strop.merge.config import load_merge_config
from strop.merge.run import run_merge
from strop.train import checkpoint
from strop.train.artifacts import atomic_dir
from strop.train.loop import train
from tests.helpers import strop_error, tiny_config, write_chat_jsonl

NO_SPACE = "no space left on device (needed ~"


@pytest.fixture
def small_disk():
    """``mount(dir, bytes)``: a tmpfs of that size at ``dir``; skips where mounting is denied."""
    mounted: list[Path] = []

    def mount(where: Path, size: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pytest.skip("cannot run mount here")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _config(run_dir: Path, data: Path, **train_section) -> dict:
    return tiny_config(run_dir, data, train={"max_steps": 2, **train_section})


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name)


# ---- checkpoints ---------------------------------------------------------------------------


def _assert_checkpoint_failure(exc: BaseException, root: Path) -> None:
    msg = str(exc)
    assert NO_SPACE in msg and "step-2" in msg and "\n" not in msg, msg
    assert f"{root / 'step-1'} is intact" in msg
    assert checkpoint.committed(root) == [root / "step-1"]
    assert _leftovers(root) == []


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(tmp_path, small_disk):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)
    run = tmp_path / "run"
    # One checkpoint of this run is ~1.5 MB: the first fits, the second does not.
    root = small_disk(run / "checkpoints", 2_200_000)
    raw = _config(run, data, save_every=1, keep_last=1)
    with pytest.raises(StropRuntimeError) as err:
        train(load_config(None, raw=raw))
    _assert_checkpoint_failure(err.value, root)
    # The survivor resumes: the same run continues on a disk with room.
    again = tmp_path / "again"
    shutil.copytree(run, again)
    saved = again / "config.yaml"  # a moved run dir: its recorded output_dir moves too
    saved.write_text(saved.read_text().replace(str(run), str(again)))
    train(load_config(None, raw=_config(again, data, save_every=1, keep_last=1)))
    assert (again / "final" / "model.safetensors").exists()


def test_a_checkpoint_write_failing_with_enospc(tmp_path, monkeypatch):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)
    real_save = checkpoint.dcp.save

    def save(state, storage_writer):
        if "step-2" in str(storage_writer.path):
            (Path(storage_writer.path) / "__0_0.distcp").write_bytes(b"half")
            raise _enospc()
        return real_save(state, storage_writer=storage_writer)

    monkeypatch.setattr(checkpoint.dcp, "save", save)
    with pytest.raises(StropRuntimeError) as err:
        train(load_config(None, raw=_config(tmp_path / "run", data, save_every=1, keep_last=1)))
    _assert_checkpoint_failure(err.value, tmp_path / "run" / "checkpoints")


# ---- final/ --------------------------------------------------------------------------------


def test_a_final_dir_that_does_not_fit_is_one_sentence_and_absent(tmp_path, small_disk):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)
    run = small_disk(tmp_path / "run", 300_000)  # the model alone is ~450 KB
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_config(run, data)))
    last = strop_error(["train", str(cfg)], 1)
    assert last.startswith("strop: error: writing ") and NO_SPACE in last, last
    assert str(run / "final") in last
    assert not (run / "final").exists() and _leftovers(run) == []


def test_a_final_dir_failing_midway_is_never_half_written(tmp_path, monkeypatch):
    """The reported case: final/ left with config.json only."""
    from strop.train import artifacts

    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)

    def write_model(model, state, tokenizer, out, *args):
        (out / "config.json").write_text("{}")
        raise _enospc()

    monkeypatch.setattr(artifacts, "_write_model", write_model)
    run = tmp_path / "run"
    with pytest.raises(StropRuntimeError, match="no space left on device") as err:
        train(load_config(None, raw=_config(run, data)))
    assert str(run / "final") in str(err.value)
    assert not (run / "final").exists() and _leftovers(run) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(StropRuntimeError, match="no space left"), atomic_dir(out, 10) as tmp:
        (tmp / "new.txt").write_text("half")
        raise _enospc()
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with pytest.raises(ValueError), atomic_dir(out) as tmp:  # other errors pass through
        raise ValueError("a bug")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert _leftovers(tmp_path) == []


# ---- merge outputs -------------------------------------------------------------------------


def _merge(out: Path, tiny_llama_dir: Path, other: Path) -> Path:
    tree = {
        "method": "linear",
        "models": [str(tiny_llama_dir), str(other)],
        "output": {"dir": str(out), "overwrite": True},
    }
    cfg, _, _ = load_merge_config(None, raw=tree)
    return run_merge(cfg, log=lambda m: None)


@pytest.fixture
def other_model(tmp_path) -> Path:
    from strop.tiny import build_tiny_model

    build_tiny_model("llama", tmp_path / "m1", seed=1)
    return tmp_path / "m1"


def test_a_merge_output_that_does_not_fit(tmp_path, small_disk, tiny_llama_dir, other_model):
    disk = small_disk(tmp_path / "disk", 300_000)
    with pytest.raises(StropRuntimeError) as err:
        _merge(disk / "merged", tiny_llama_dir, other_model)
    assert NO_SPACE in str(err.value) and str(disk / "merged") in str(err.value)
    assert list(disk.iterdir()) == []


def test_a_merge_output_failing_midway(tmp_path, monkeypatch, tiny_llama_dir, other_model):
    from strop.merge.io import ShardWriter

    real_write, calls = ShardWriter.write, []

    def write(self, name, tensor):
        calls.append(name)
        if len(calls) == 3:
            raise _enospc()
        real_write(self, name, tensor)

    monkeypatch.setattr(ShardWriter, "write", write)
    (tmp_path / "out").mkdir()
    with pytest.raises(StropRuntimeError, match="no space left on device"):
        _merge(tmp_path / "out" / "merged", tiny_llama_dir, other_model)
    assert list((tmp_path / "out").iterdir()) == []


# ---- recognising a full disk ---------------------------------------------------------------


def test_disk_full_recognises_each_writers_report(tmp_path):
    from torch.distributed.checkpoint.api import CheckpointException

    assert disk_full(_enospc(), tmp_path, 5_000_000).startswith(NO_SPACE + "5.0 MB at ")
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full(rust, tmp_path)
    zip_writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")
    wrapped = CheckpointException("write", {0: (zip_writer, [])})
    huge = 1 << 62  # more than any disk has free: the vague zip-writer failure counts
    assert disk_full(wrapped, tmp_path, huge)
    assert disk_full(wrapped, tmp_path, 10) is None  # room to spare: some other failure
    assert disk_full(ValueError("a bug"), tmp_path, huge) is None
    assert disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path, huge) is None


def test_a_prepare_output_that_does_not_fit_is_one_sentence_and_leaves_nothing(
    tmp_path, small_disk
):
    """strop prepare on a tiny disk: the sentence, exit 1, and output.dir gone again (it did
    not exist before); an empty input is refused the same way, leaving nothing behind."""
    import yaml

    data = tmp_path / "big.jsonl"
    data.write_text(
        "".join(json.dumps({"text": "alpha " * 200 + str(i)}) + "\n" for i in range(400))
    )
    disk = small_disk(tmp_path / "disk", 100_000)
    cfg = tmp_path / "prep.yaml"
    out = disk / "clean"
    cfg.write_text(
        yaml.safe_dump({"inputs": [str(data)], "output": {"dir": str(out)}, "steps": ["normalise"]})
    )
    line = strop_error(["prepare", str(cfg)], 1)
    assert "no space left on device" in line and str(out) in line
    assert not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = strop_error(
        ["prepare", str(cfg), f"inputs=[{empty}]", f"output.dir={tmp_path / 'o'}"], 2
    )
    assert "inputs: no rows in" in line and not (tmp_path / "o").exists()
