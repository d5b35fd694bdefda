"""Score conversations with a reward model trained by ``stage: rm``.

The conversation is rendered with the reward model's chat template and scored at its last
token, exactly as in training (strop.train.objectives.rm). Works with a full reward-model
dir and with a LoRA/DoRA/IA3 adapter dir (its base is read from adapter_config.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from strop.data.batching import Row, collate
from strop.data.records import Message, Record
from strop.data.render import ensure_chat_template, tokenize_chat
from strop.errors import StropError
from strop.models.load import load_model
from strop.models.logps import last_token_rewards


def load_reward_model(path: str | Path, dtype: str = "auto"):
    """(model, tokenizer) in eval mode from a stage-rm ``final/`` dir (full or adapter)."""
    path = Path(path)
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.exists():
        base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
        model, tok, _ = load_model(base, dtype, adapter=str(path), head="reward")
    elif (path / "config.json").exists():
        archs = json.loads((path / "config.json").read_text()).get("architectures") or [""]
        if not archs[0].endswith("ForSequenceClassification"):
            raise StropError(
                f"{path}: not a reward model ({archs[0] or 'no architecture'}); "
                "train one with stage: rm"
            )
        model, tok, _ = load_model(str(path), dtype, head="reward")
    else:
        raise StropError(f"{path}: not a model or adapter dir (no config.json)")
    return model.eval(), tok


@torch.no_grad()
def score(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
    """One reward per conversation (a list of {"role", "content"} messages)."""
    ensure_chat_template(tokenizer)
    device = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, len(conversations), batch_size):
        rows = []
        for i, conv in enumerate(conversations[s : s + batch_size]):
            rec = Record(f"conversation {s + i}", messages=[Message(**m) for m in conv])
            ids = tokenize_chat(tokenizer, rec, "all").input_ids
            rows.append(Row(ids, ids, [len(ids)], {"n": 0.0}))
        batch = collate(rows, tokenizer.pad_token_id, doc_attention=True, with_docs=True)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out += last_token_rewards(model, batch).tolist()
    return out
