"""Class 2, bad inputs: the catalogue, the files each case dir holds, the verdicts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .fixtures import REWARD_MODULE, Payload, chat_rows, jsonl, pref_rows, prompt_rows
from .inputs_common import Case, _msgs, _y, sft_cfg
from .inputs_data import inspect_cases, prepare_cases
from .inputs_eval import eval_cases, eval_layouts
from .inputs_merge_generate import generate_cases, merge_cases
from .inputs_train import train_keys, train_paths, train_yaml
from .inputs_train_data import train_grpo, train_rows, train_stages
from .runner import Launcher, Proc


def catalogue(models: Path) -> list[Case]:
    """User mistakes, verb by verb. Each case dir also holds the base files (see _base_files)."""
    C: list[Case] = []
    C: list[Case] = []
    for add in (train_keys, train_yaml, train_paths, train_rows, train_stages, train_grpo):
        add(C)
    inspect_cases(C)
    prepare_cases(C)
    eval_cases(C)
    eval_layouts(C)
    merge_cases(C, models)
    generate_cases(C)
    return C


def _base_files(d: Path) -> None:
    jsonl(d / "chat.jsonl", chat_rows(40, seed=3))
    jsonl(d / "pref.jsonl", pref_rows(24))
    jsonl(d / "prompts.jsonl", prompt_rows(8))
    jsonl(d / "in.jsonl", chat_rows(20, seed=4))
    jsonl(
        d / "mc.jsonl",
        [
            {
                "question": "Which is a colour?",
                "choices": ["Red", "Dog", "Six", "Run"],
                "answer": "A",
            },
            {
                "question": "How many legs has a spider?",
                "choices": ["Six", "Eight", "Ten", "Four"],
                "answer": "B",
            },
        ],
    )
    jsonl(
        d / "gen.jsonl", [_msgs(("user", "Say hi."), ("assistant", "hi")), {"prompt": "Count: 1 2"}]
    )
    (d / "c.yaml").write_text(sft_cfg())
    (d / "prep.yaml").write_text(
        _y({"inputs": ["in.jsonl"], "output": {"dir": "pout"}, "steps": ["normalise"]})
    )
    (d / "probe_rewards.py").write_text(REWARD_MODULE)
    (d / "afile").write_text("a file, not a directory\n")
    (d / "emptydir").mkdir(exist_ok=True)


def build_merge_models(models: Path) -> None:
    """m1, m2 (tiny-llama seeds 1, 2), wide (other intermediate size), truncated, garbage,
    pickled (pytorch_model.bin holding a payload that would write models/PWNED)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from strop.tiny import build_tiny_model

    for seed in (1, 2):
        build_tiny_model("llama", models / f"m{seed}", seed=seed)
    cfg = LlamaConfig.from_pretrained(models / "m1")
    cfg.intermediate_size = 96
    LlamaForCausalLM(cfg).save_pretrained(models / "wide")
    for name in ("truncated", "garbage", "pickled"):
        shutil.copytree(models / "m2", models / name)
    for f in (models / "wide",):
        for tok in (models / "m1").glob("*"):
            if tok.name.startswith(("tokenizer", "chat_template")):
                shutil.copy(tok, f)
    st = models / "truncated" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    g = models / "garbage" / "model.safetensors"
    g.write_bytes(b"\xff" * 8 + b"not a header" * 100)
    (models / "pickled" / "model.safetensors").unlink()
    torch.save(Payload(models / "PWNED"), models / "pickled" / "pytorch_model.bin")


def classify(case: Case, p: Proc, d: Path) -> tuple[str, str]:
    """(verdict, note). Verdicts: clear | traceback | silent | other | handled | accepted."""
    err = p.err
    lines = [x for x in err.splitlines() if x.startswith("strop: error:")]
    block = err[err.index("strop: error:") :] if lines else ""  # the sentence and what it lists
    extra = list(case.check(d, p)) if case.check else []
    if p.rc == "timeout":
        return "other", "timed out"
    if "Traceback (most recent call last)" in err:
        tail = [x for x in err.strip().splitlines() if x and not x.startswith(" ")][-1:]
        return "traceback", (tail[0] if tail else "")[:300]
    if case.expect in ("quarantine", "accept"):
        ok = p.rc == 0 and not extra
        verdict = ("handled" if case.expect == "quarantine" else "accepted") if ok else "other"
        note = lines[0] if lines else ""
        return verdict, "; ".join([*(extra or []), note] if not ok else [note]) or f"exit {p.rc}"
    if p.rc == 0:
        return "silent", "exit 0" + (f"; {'; '.join(extra)}" if extra else "")
    if extra:
        return "other", "; ".join(extra)
    if p.rc in (1, 2) and len(lines) == 1:
        if case.names and not any(n in block for n in case.names):
            return "other", f"sentence names none of {list(case.names)}: {lines[0][:300]}"
        return "clear", lines[0][:400]
    if p.rc in (1, 2) and not lines and "Usage:" in err:
        msg = " ".join(
            x.strip("│╭╮╰╯─ ") for x in err.splitlines() if "Invalid value" in x or "Error" in x
        )
        return "other", f"argument parser's usage error, exit {p.rc}: {msg[:200]}"
    return "other", f"exit {p.rc}, {len(lines)} 'strop: error:' lines: {err.strip()[-300:]!r}"


def inputs_class(L: Launcher, work: Path, quick: bool, jobs: int, only: str = "") -> dict:
    models = work / "models"
    L.call(build_merge_models, models)
    cases = catalogue(models)
    if quick:
        cases = [c for k, c in enumerate(cases) if k % 4 == 0 or c.expect != "refuse"]
    if only:
        cases = [c for c in cases if c.id in only.split(",")]
    items, pending = [], list(cases)
    running: list[tuple[Case, Proc, Path]] = []
    t0 = time.monotonic()
    while pending or running:
        while pending and len(running) < jobs:
            c = pending.pop(0)
            d = work / "inputs" / c.id
            _base_files(d)
            for name, content in c.files.items():
                path = d / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content)
            running.append((c, L.start(c.argv, d, d / "log"), d))
        for entry in list(running):
            c, p, d = entry
            if p.poll() is None and time.monotonic() - p.t0 < 300:
                continue
            if p.rc is None:
                p.wait(0)
            running.remove(entry)
            verdict, note = classify(c, p, d)
            items.append(
                {
                    "id": c.id,
                    "verb": c.verb,
                    "what": c.what,
                    "expect": c.expect,
                    "command": "strop " + " ".join(c.argv),
                    "exit": p.rc,
                    "verdict": verdict,
                    "note": note,
                    "seconds": round(p.seconds, 1),
                }
            )
            mark = {"clear": ".", "handled": "q", "accepted": "a"}.get(verdict, verdict[0].upper())
            print(mark, end="", flush=True)
        time.sleep(0.02)
    print(f"  ({time.monotonic() - t0:.0f}s)")
    order = {c.id: k for k, c in enumerate(cases)}
    items.sort(key=lambda x: order[x["id"]])
    return {"items": items}
