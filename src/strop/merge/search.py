"""Weight search: merge each candidate setting, score it with strop eval tasks, keep the best.

Writes into ``output.dir``: the best candidate's model (with its merge_manifest.json),
``search.md`` and ``search.json`` (one row per candidate: the searched values, every metric,
the objective) and ``search.png`` (objective vs each searched value). Candidates are merged
under ``<output.dir>-candidates/`` and removed afterwards unless ``keep_candidates``.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from strop.config.load import read_yaml_tree
from strop.errors import StropError
from strop.eval.config import EvalConfig, ModelSpec
from strop.eval.config import TaskBase as TaskSpec  # TaskBase.model_validate: any task type
from strop.eval.runner import score_models
from strop.merge.config import MergeConfig, SearchSection, set_dotted, validate_merge_tree
from strop.merge.run import run_merge
from strop.train.artifacts import atomic_dir


@dataclass
class SearchResult:
    best_dir: Path
    best: dict
    rows: list[dict]
    table_md: Path
    table_json: Path
    plot: Path


def candidates(search: SearchSection) -> list[dict[str, float]]:
    """Grid: the cartesian product of the listed values. Random: ``trials`` draws, each key
    uniform in its [low, high], seeded."""
    keys = list(search.space)
    if search.strategy == "grid":
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(search.space[k] for k in keys))
        ]
    rng = random.Random(search.seed)
    return [
        {k: round(rng.uniform(*search.space[k]), 6) for k in keys} for _ in range(search.trials)
    ]


def search_tasks(search: SearchSection) -> tuple[list[TaskSpec], int]:
    """The eval tasks (inline, or from an eval config) and the eval seed."""
    if search.tasks:
        tasks, seed = search.tasks, 0
    else:
        tree, source = read_yaml_tree(search.eval_config)
        try:
            tasks = [TaskSpec.model_validate(t) for t in tree.get("tasks") or []]
        except Exception as exc:  # pydantic's message names the field
            raise StropError(f"{source}: tasks: {exc}") from None
        seed = int(tree.get("seed", 0))
        if not tasks:
            raise StropError(f"{source}: no tasks to score merge candidates with")
    names = {t.name for t in tasks}
    for item in search.objective:
        task = item.split("/", 1)[0]
        if task not in names:
            raise StropError(
                f"search.objective: {item!r}: no task {task!r} (tasks: {', '.join(sorted(names))})"
            )
    for t in tasks:
        for path in [t.data] if isinstance(t.data, str) else t.data:
            if not Path(path).exists():
                raise StropError(f"search: task {t.name!r}: data file not found: {path}")
    return tasks, seed


def score_candidate(
    model_dir: Path, tasks: list[TaskSpec], seed: int, log: Callable[[str], None]
) -> dict[str, float]:
    """Every metric of every task for one merged model, as ``task/metric``."""

    ecfg = EvalConfig(
        models={"candidate": ModelSpec(model=str(model_dir))},
        tasks=tasks,
        seed=seed,
        output_dir=str(model_dir),
    )
    _, outputs = score_models(ecfg, log)
    return {
        f"{task}/{metric}": m.value
        for task, per_model in outputs.items()
        for metric, m in per_model["candidate"].metrics.items()
    }


def run_search(
    cfg: MergeConfig, tree: dict, source: str, log: Callable[[str], None] = print
) -> SearchResult:

    search = cfg.search
    assert search is not None
    tasks, seed = search_tasks(search)
    out = Path(cfg.output.dir)
    if out.exists() and any(out.iterdir()) and not cfg.output.overwrite:
        raise StropError(f"output.dir: {out} exists and is not empty (set output.overwrite: true)")
    work = out.parent / f"{out.name}-candidates"
    shutil.rmtree(work, ignore_errors=True)
    rows: list[dict] = []
    for i, values in enumerate(candidates(search)):
        cand_tree = copy.deepcopy(tree)
        cand_tree.pop("search", None)
        for key, value in values.items():
            set_dotted(cand_tree, key, value)
        set_dotted(cand_tree, "output.dir", str(work / f"candidate-{i:03d}"))
        set_dotted(cand_tree, "output.overwrite", True)
        cand = validate_merge_tree(cand_tree, f"{source} (search candidate {values})")
        log(f"candidate {i}: {values}")
        cand_dir = run_merge(cand, log=log)
        metrics = score_candidate(cand_dir, tasks, seed, log)
        missing = [o for o in search.objective if o not in metrics]
        if missing:
            raise StropError(
                f"search.objective: {', '.join(missing)} not reported "
                f"(reported: {', '.join(metrics)})"
            )
        score = sum(metrics[o] for o in search.objective) / len(search.objective)
        rows.append({"candidate": i, "values": values, "metrics": metrics, "objective": score})
        log(f"candidate {i}: objective {score:.4f}")
    pick = max if search.mode == "max" else min
    best = pick(rows, key=lambda r: r["objective"])  # first of equals: the earlier candidate
    best_src = work / f"candidate-{best['candidate']:03d}"
    size = sum(f.stat().st_size for f in best_src.iterdir() if f.is_file())
    with atomic_dir(out, size + (1 << 20)) as tmp:  # out holds a complete result or nothing
        tmp.rmdir()
        shutil.copytree(best_src, tmp) if search.keep_candidates else best_src.rename(tmp)
        report = {"objective": search.objective, "mode": search.mode, "best": best, "rows": rows}
        (tmp / "search.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "search.md").write_text(render_table(search, rows, best))
        plot_search(tmp / "search.png", search, rows, best)
    if not search.keep_candidates:
        shutil.rmtree(work, ignore_errors=True)
    md, js, png = out / "search.md", out / "search.json", out / "search.png"
    return SearchResult(out, best, rows, md, js, png)


def render_table(search: SearchSection, rows: list[dict], best: dict) -> str:
    keys = list(search.space)
    metrics = list(rows[0]["metrics"])
    head = ["#", *keys, *metrics, "objective"]
    lines = [
        "# strop merge search",
        "",
        f"Objective: {search.mode} of the mean of {', '.join(search.objective)}. "
        f"Best: candidate {best['candidate']} ({best['values']}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---:"] * len(head)) + "|",
    ]
    for r in rows:
        mark = " **(best)**" if r is best else ""
        cells = [str(r["candidate"]) + mark, *(f"{r['values'][k]:g}" for k in keys)]
        cells += [f"{r['metrics'][m]:.4f}" for m in metrics] + [f"{r['objective']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n![objective vs searched values](search.png)\n"


def plot_search(path: Path, search: SearchSection, rows: list[dict], best: dict) -> None:
    """One panel per searched key: the objective of every candidate against that key's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(search.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(1.5 + 3.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [r["values"][key] for r in rows]
        ys = [r["objective"] for r in rows]
        ax.scatter(xs, ys, color="C0", label="candidates")
        ax.scatter([best["values"][key]], [best["objective"]], color="C3", s=80, label="best")
        ax.set_xlabel(key)
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"merge search: {search.mode} {', '.join(search.objective)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
