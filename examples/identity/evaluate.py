"""Before/after numbers for the identity DPO example (docs/alignment.md).

    python examples/identity/evaluate.py runs/identity/final

On the held-out, differently phrased identity questions: the mean log-probability margin
log p(chosen) - log p(rejected) and the preference accuracy, base vs tuned; the share of
greedy answers (to the first 16 held-out questions) that give the new name. On general prompts (no identity involved): the base
model's own greedy answers scored per token under both models (a drift measure: DPO should
barely move it) and the tuned model's answers, printed for a look.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def margins(model, tok, records) -> torch.Tensor:
    """log p(chosen) - log p(rejected) per held-out pair, summed over response tokens."""
    from strop.data.batching import collate
    from strop.data.pairs import preference_rows
    from strop.models.logps import pair_logps

    rows, _ = preference_rows(tok, records, max_length=256)
    out = []
    with torch.no_grad():
        for s in range(0, len(rows), 8):
            batch = collate(rows[s : s + 8], tok.pad_token_id, with_docs=True)
            pair = pair_logps(model, batch, 1024, len(rows[s : s + 8]))
            out.append(pair[:, 0] - pair[:, 1])
    return torch.cat(out)


def nll_per_token(model, tok, prompts: list[str], answers: list[str]) -> float:
    from strop.data.records import Message, Record
    from strop.data.render import IGNORE, tokenize_chat

    total, count = 0.0, 0
    with torch.no_grad():
        for p, a in zip(prompts, answers, strict=True):
            rec = Record("general", messages=[Message("user", p), Message("assistant", a)])
            s = tokenize_chat(tok, rec, "assistant")
            ids = torch.tensor([s.input_ids])
            labels = torch.tensor([s.labels])
            logits = model(input_ids=ids).logits[0, :-1].float()
            y = labels[0, 1:]
            keep = y != IGNORE
            total += torch.nn.functional.cross_entropy(
                logits[keep], y[keep], reduction="sum"
            ).item()
            count += int(keep.sum())
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter", help="the DPO run's final/ dir")
    ap.add_argument("--out", default=None, help="where to write identity_eval.json")
    args = ap.parse_args()
    from strop.data.validate import load_records
    from strop.infer import GenerationParams, generate
    from strop.models.load import load_model

    records = load_records(HERE / "eval.jsonl", kind="preference").records
    questions = [r.messages[-1].content for r in records]
    general = [json.loads(x)["prompt"] for x in (HERE / "general.jsonl").read_text().splitlines()]
    params = GenerationParams(max_new_tokens=48, batch_size=16)
    results, answers = {}, {}
    for name, adapter in (("base", None), ("tuned", args.adapter)):
        model, tok, _ = load_model("smollm2-135m-instruct", "fp32", adapter=adapter)
        model.eval()
        m = margins(model, tok, records)
        said = generate(model, tok, questions[:16], params)
        answers[name] = generate(model, tok, general, params)
        results[name] = {
            "held-out margin (mean log p chosen - log p rejected)": round(m.mean().item(), 2),
            "held-out preference accuracy": round((m > 0).double().mean().item(), 3),
            "greedy answers naming 'Kestrel'": round(
                sum("Kestrel" in x for x in said) / len(said), 3
            ),
        }
        answers[f"{name} identity"] = said[:3]
    for name, adapter in (("base", None), ("tuned", args.adapter)):
        model, tok, _ = load_model("smollm2-135m-instruct", "fp32", adapter=adapter)
        results[name]["general prompts: NLL/token of the base's own answers"] = round(
            nll_per_token(model.eval(), tok, general, answers["base"]), 3
        )
    print(json.dumps(results, indent=1))
    for q, b, t in zip(general, answers["base"], answers["tuned"], strict=True):
        print(f"\nQ: {q}\n  base:  {b!r}\n  tuned: {t!r}")
    for b, t in zip(answers["base identity"], answers["tuned identity"], strict=True):
        print(f"\nidentity  base: {b!r}\n          tuned: {t!r}")
    out = Path(args.out or Path(args.adapter).parent / "identity_eval.json")
    out.write_text(json.dumps({"results": results, "answers": answers}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
