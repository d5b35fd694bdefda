"""Write examples/prepare/sample.jsonl and eval.jsonl deterministically.

sample.jsonl: 300 synthetic chats (English and Chinese) with planted exact and near duplicates,
PII, PII look-alikes and refusals (strop.data.prepare.synthetic), then hand-written rows that
need normalising (HTML, mojibake, full-width characters, control characters), two rows that
copy questions of eval.jsonl, and one malformed line. Run from the repo root:

    python examples/prepare/make_sample.py
"""

from __future__ import annotations

import json
from pathlib import Path

from strop.data.prepare.synthetic import chat_corpus

HERE = Path(__file__).parent

EVAL = [
    "What is the boiling point of water at sea level in degrees Celsius, and why does it drop at altitude?",
    "Name the three primary colours of light used by computer screens and explain additive mixing.",
    "中国的首都是哪座城市？请简单介绍它的历史和主要名胜古迹。",
    "Which planet in our solar system has the most moons known today, and how many are there?",
]


def chat(user: str, assistant: str, **meta: object) -> dict:
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ],
        **meta,
    }


HAND = [
    chat(
        "<p>How do I <b>bold</b> text in HTML?</p>",
        "Wrap it in &lt;b&gt; tags: `<b>bold</b>`. &amp; that's it.",
    ),
    chat("Whatâ€™s the cafÃ© called?", "Itâ€™s called CafÃ© RenÃ©, near the station."),
    chat("ＡＢＣ１２３ 是什么意思？", "ＡＢＣ１２３ 是一个示例编号，全角字符会被转换为半角。"),
    chat("Tab\tand\u200bzero\u200bwidth\x07 bell", "Clean   this    text\r\n\r\n\r\n\r\nplease."),
    chat(
        EVAL[0], "100 °C; air pressure is lower at altitude, so water boils at a lower temperature."
    ),
    chat(EVAL[2], "北京。它有三千多年的历史，名胜古迹包括故宫、长城和天坛。"),
    chat(
        "Reply with ok", "ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok"
    ),
    chat("Tell me a joke", "As an AI language model, I don't have a sense of humour."),
    chat("请帮我写一封邮件", "抱歉，我无法帮助你完成这个请求。"),
]


def main() -> None:
    rows = [
        row
        for row, _ in chat_corpus(
            300, seed=7, pii_rate=0.12, lookalike_rate=0.08, refusal_rate=0.03
        )
    ]
    for i, row in enumerate(rows):
        row["source"] = (
            "synthetic-zh"
            if any("\u4e00" <= c <= "\u9fff" for c in row["messages"][-1]["content"])
            else "synthetic-en"
        )
        row["id"] = i
    for i, row in enumerate(HAND):
        rows.append({**row, "id": 300 + i, "source": "hand"})
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(150, '{"messages": [{"role": "user", "content": "a broken row"')  # malformed
    (HERE / "sample.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    evals = [chat(q, "reference answer", id=f"eval-{i}") for i, q in enumerate(EVAL)]
    (HERE / "eval.jsonl").write_text(
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in evals), encoding="utf-8"
    )
    print(
        f"wrote {len(lines)} lines to {HERE / 'sample.jsonl'} and {len(evals)} to {HERE / 'eval.jsonl'}"
    )


if __name__ == "__main__":
    main()
