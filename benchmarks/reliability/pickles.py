"""Class 3, continued: pickles planted in the files strop reads back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .fixtures import Payload, chat_rows, jsonl, train_config, write_yaml
from .rundirs import one_sentence
from .runner import Launcher, Proc


def planted_pickles(L: Launcher, d: Path, quick: bool) -> list[dict]:
    """A payload pickle planted in each file strop reads back that could hold one: resume must
    not run it (a checkpoint's RNG file and any DCP index), nor merge, generate or eval."""
    import torch  # torch.save of a plain object: no tensor op runs here

    from strop.hub import resolve_model

    d.mkdir(parents=True, exist_ok=True)
    pwned = d / "PWNED"
    items = []
    jsonl(d / "chat.jsonl", chat_rows(16, seed=9))
    write_yaml(
        d / "c.yaml",
        train_config(
            "run", "chat.jsonl", "sft", train={"max_steps": 2, "save_every": 1, "keep_last": 2}
        ),
    )
    first = L.run(["train", "c.yaml"], d, d / "logs" / "first")

    def record(what: str, p: Proc | None, planted: list[str]) -> None:
        ran = pwned.exists()
        ok, lines = one_sentence(p.err) if p else (False, [])
        items.append(
            {
                "id": "pickle-" + what.replace(" ", "-"),
                "backend": "files read back",
                "sentence": ok,
                "traceback": "Traceback (most recent" in (p.err if p else ""),
                "what": f"{what} (planted in: {', '.join(planted) or 'nothing'})",
                "score": None,
                "reason": (lines[0] if lines else f"exit {p.rc if p else None}")[:300],
                "exit": p.rc if p else None,
                "contained": bool(planted) and not ran,
                "problems": (["the planted pickle ran"] if ran else [])
                + ([] if planted else ["nothing to plant into"]),
            }
        )
        print("." if items[-1]["contained"] else "E", end="", flush=True)
        if ran:
            pwned.unlink()

    if first.rc == 0:
        ck = d / "run" / "checkpoints" / "step-2"
        planted = []
        for f in sorted(ck.iterdir()):
            if f.suffix in (".pt", ".pkl", ".pickle") or f.name == ".metadata":
                torch.save(Payload(pwned), f) if f.suffix == ".pt" else f.write_bytes(
                    __import__("pickle").dumps(Payload(pwned))
                )
                planted.append(f.name)
        p = L.run(["train", "c.yaml", "train.max_steps=3"], d, d / "logs" / "resume")
        record("resume from a checkpoint", p, planted)
    else:
        items.append(
            {
                "id": "pickle-resume",
                "backend": "files read back",
                "what": "resume",
                "contained": False,
                "problems": [f"first run exit {first.rc}"],
            }
        )
    base = Path(resolve_model("tiny-llama"))
    # a model dir whose weights are a pickle: merge, eval, generate
    model = d / "pickled-model"
    model.mkdir(exist_ok=True)
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, model)
    torch.save(Payload(pwned), model / "pytorch_model.bin")
    write_yaml(
        d / "mg.yaml",
        {"method": "linear", "models": [str(base), "pickled-model"], "output": {"dir": "mout"}},
    )
    record(
        "merge input model",
        L.run(["merge", "mg.yaml"], d, d / "logs" / "merge"),
        ["pickled-model/pytorch_model.bin"],
    )
    jsonl(d / "gen.jsonl", [{"prompt": "hi"}])
    record(
        "generate model",
        L.run(
            [
                "generate",
                "-i",
                "gen.jsonl",
                "-o",
                "g.jsonl",
                "-m",
                "./pickled-model",
                "--max-new-tokens",
                "2",
            ],
            d,
            d / "logs" / "gen-model",
        ),
        ["pickled-model/pytorch_model.bin"],
    )
    write_yaml(
        d / "e.yaml",
        {
            "models": {"m": "./pickled-model"},
            "output_dir": "eout",
            "tasks": [{"name": "ppl", "type": "perplexity", "data": "chat.jsonl", "limit": 2}],
        },
    )
    record(
        "eval model",
        L.run(["eval", "e.yaml"], d, d / "logs" / "eval"),
        ["pickled-model/pytorch_model.bin"],
    )
    # an adapter whose weights are a pickle
    adapter = d / "pickled-adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(base),
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["q_proj", "v_proj"],
            }
        )
    )
    torch.save(Payload(pwned), adapter / "adapter_model.bin")
    record(
        "generate adapter",
        L.run(
            [
                "generate",
                "-i",
                "gen.jsonl",
                "-o",
                "g2.jsonl",
                "-m",
                "tiny-llama",
                "-a",
                "pickled-adapter",
                "--max-new-tokens",
                "2",
            ],
            d,
            d / "logs" / "gen-adapter",
        ),
        ["pickled-adapter/adapter_model.bin"],
    )
    write_yaml(
        d / "e2.yaml",
        {
            "models": {"m": {"model": "tiny-llama", "adapter": "pickled-adapter"}},
            "output_dir": "eout2",
            "tasks": [{"name": "ppl", "type": "perplexity", "data": "chat.jsonl", "limit": 2}],
        },
    )
    record(
        "eval adapter",
        L.run(["eval", "e2.yaml"], d, d / "logs" / "eval-adapter"),
        ["pickled-adapter/adapter_model.bin"],
    )
    print()
    return items
