"""1 process ≡ 2 processes (DESIGN.md §3.3), for DDP and FSDP2 on CPU over gloo.

Two ranks with batch_size b see exactly the rows one process sees with batch_size 2b (the
sampler splits each step's global chunk across ranks), and the loop divides every loss sum by
the step's global target-token count, so the per-step loss, gradient norm and final weights
must agree to fp32 round-off. Checkpoints are DCP, so a run saved by 2 ranks resumes on 1 and
vice versa. Everything is dropout-free: per-rank RNG streams cannot match a single process's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.integration.dist_helpers import (
    WORDS,
    assert_steps_close,
    assert_weights_close,
    eval_loss,
    final_weights,
    launch,
    metrics,
    read_audit,
    run_train,
    torchrun,
    write_chat_data,
    write_config,
)

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="this torch build has no torch.distributed gloo backend",
)

B = 2  # per-rank micro-batch; the single process uses 2 * B
METHODS = {"full": "{name: full}", "lora": "{name: lora, r: 4, alpha: 8, dropout: 0.0}"}


class Runs:
    """Each training run happens once per module and is shared by the tests that read it."""

    def __init__(self, root: Path):
        self.root = root
        self.data = write_chat_data(root / "chat.jsonl", n=16)
        # 5 eval rows: ranks get 3 and 2, so with batch 2 they run 2 and 1 micro-batches (the
        # loop must still run the same number of FSDP2 forwards on each).
        self.eval = write_chat_data(root / "eval.jsonl", n=5, seed=1)
        self.done: dict[str, Path] = {}

    def config(self, method: str) -> Path:
        path = self.root / f"{method}.yaml"
        if not path.exists():
            write_config(path, self.data, METHODS[method], self.eval, save_every=2, keep_last=2)
        return path

    def get(self, method: str, mode: str, resume: Path | None = None, nproc: int = 2) -> Path:
        """mode "none" runs one process with batch 2B; "ddp"/"fsdp2" run ``nproc`` ranks."""
        name = f"{method}-{mode}-{nproc}" + (f"-from-{resume.parent.parent.name}" if resume else "")
        if name not in self.done:
            out = self.root / name
            nproc = 1 if mode == "none" else nproc
            over = [
                f"train.output_dir={out}",
                f"train.distributed={mode}",
                f"train.batch_size={B * 2 // nproc}",
            ]
            if resume:
                over.append(f"train.resume={resume}")
            audit = self.root / f"{name}.audit" if nproc > 1 else None
            run_train(self.config(method), over, nproc=nproc, audit=audit)
            self.done[name] = out
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir) -> Runs:
    return Runs(tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize(
    ("method", "mode"),
    [("full", "ddp"), ("full", "fsdp2"), ("lora", "ddp"), ("lora", "fsdp2")],
)
def test_two_processes_match_one(runs, method, mode):
    one, two = runs.get(method, "none"), runs.get(method, mode)
    steps = metrics(two)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert steps[-1]["tokens"] > 0
    assert_steps_close(steps, metrics(one))
    assert eval_loss(two) == pytest.approx(eval_loss(one), rel=1e-5)
    assert_weights_close(final_weights(two), final_weights(one))


@pytest.mark.parametrize(
    ("method", "saved_by", "resumed_by"),
    [
        ("full", ("fsdp2", 2), ("none", 1)),  # sharded on 2 ranks -> a plain process, no group
        ("full", ("none", 1), ("fsdp2", 2)),  # one process -> resharded over 2 ranks on load
        ("lora", ("ddp", 2), ("fsdp2", 1)),  # DDP's checkpoint -> FSDP2 in a world of one
    ],
    ids=["fsdp2x2-to-plain", "plain-to-fsdp2x2", "lora-ddpx2-to-fsdp2x1"],
)
def test_checkpoint_resumes_across_world_sizes(runs, method, saved_by, resumed_by):
    saved = runs.get(method, saved_by[0], nproc=saved_by[1])
    step2 = saved / "checkpoints" / "step-2"
    assert (step2 / "COMMITTED").exists()
    resumed = runs.get(method, resumed_by[0], resume=step2, nproc=resumed_by[1])
    reference = runs.get(method, "none")  # uninterrupted, one process
    steps = metrics(resumed)
    assert [r["step"] for r in steps] == [3, 4]
    assert_steps_close(steps, metrics(reference)[2:])
    assert eval_loss(resumed) == pytest.approx(eval_loss(reference), rel=1e-5)
    assert_weights_close(final_weights(resumed), final_weights(reference))


@pytest.mark.parametrize(("method", "mode"), [("full", "fsdp2"), ("lora", "ddp")])
def test_only_rank0_writes_run_artifacts_and_final_loads(runs, method, mode):
    run = runs.get(method, mode)
    audit = read_audit(runs.root / f"{run.name}.audit")
    assert sorted(audit) == [0, 1]
    # Rank 1 writes only its own checkpoint shard (and its RNG state, which torch.save writes
    # from C++, out of the audit hook's sight: checked on disk instead).
    assert {p for p in audit[1] if not p.startswith("checkpoints/")} == set(), audit[1]
    assert "checkpoints/.tmp-step-2/__1_0.distcp" in audit[1]
    assert (run / "checkpoints" / "step-2" / "rng-rank1.pt").exists()
    # final/ is written as .final.tmp and renamed once complete (nothing half-written under
    # the final name)
    written = {"metrics.jsonl", "config.yaml", "report.md", ".final.tmp/tokenizer_config.json"}
    assert written <= audit[0] and "final" in audit[0], audit[0]
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]  # one line per step, not two

    reference = runs.get(method, "none")
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    logits = [_load_final(r, method)(ids).logits for r in (run, reference)]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-4)


def _load_final(run: Path, method: str):
    from transformers import AutoModelForCausalLM

    final = run / "final"
    if method == "full":
        return AutoModelForCausalLM.from_pretrained(final).eval()
    from peft import PeftConfig, PeftModel

    base = AutoModelForCausalLM.from_pretrained(
        PeftConfig.from_pretrained(final).base_model_name_or_path
    )
    return PeftModel.from_pretrained(base, final).eval()


SYSTEM = " ".join(WORDS * 2)  # a common system prompt well over SHARE_MIN_TOKENS tokens


@pytest.fixture(scope="module")
def shared_prefix_reference(runs) -> tuple[Path, Path]:
    """(config, one process without prefix sharing) on chat data that opens with SYSTEM."""
    data = write_chat_data(runs.root / "system.jsonl", n=16, system=SYSTEM)
    cfg = write_config(runs.root / "system.yaml", data, METHODS["lora"])
    out = runs.root / "system-unshared"
    run_train(
        cfg, [f"train.output_dir={out}", f"train.batch_size={2 * B}", "data.share_prefix=false"]
    )
    return cfg, out


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_shared_prefix_on_two_ranks_matches_unshared_one_process(shared_prefix_reference, mode):
    """share_prefix's flat [prefix][suffixes] rows and their ``strop_shared_prefix`` length go
    through DDP and FSDP2 like any batch: the same steps as one unshared process."""
    cfg, reference = shared_prefix_reference
    out = cfg.parent / f"system-shared-{mode}"
    overrides = [
        f"train.output_dir={out}",
        f"train.distributed={mode}",
        f"train.batch_size={B}",
        "data.share_prefix=true",
    ]
    run_train(cfg, overrides, nproc=2)
    steps = metrics(out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["shared_frac"] > 0.3 for r in steps), steps  # the prompt really was shared
    assert_steps_close(steps, metrics(reference))
    assert_weights_close(final_weights(out), final_weights(reference))


FAILING_RANK = """
import time, torch
from strop.train import distributed
d = distributed.setup("ddp")
try:
    if d.rank == 1:
        raise RuntimeError("boom on rank 1")
    time.sleep(1)
    d.all_sum(torch.ones(1))
finally:
    distributed.teardown()
"""


def test_a_failing_rank_ends_the_launch_instead_of_hanging(tmp_path):
    """The failing rank must not wait in teardown's barrier for ranks that will never come."""
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK)
    code, _, err = launch([*torchrun(2), str(script)], timeout=90)
    assert code is not None, "hung: a failing rank waited in teardown's barrier"
    assert code != 0 and "boom on rank 1" in err


def test_dpo_one_process_equals_two_ddp_ranks(tmp_path):
    """Pairs are the unit: each rank's loss sum is divided by the global pair count, and the
    precomputed reference is the same on every rank; metrics are reduced over ranks too."""
    from tests.helpers import write_preference_jsonl

    data = write_preference_jsonl(tmp_path / "pairs.jsonl", n=16)
    cfg = write_config(tmp_path / "dpo.yaml", data)
    cfg.write_text(cfg.read_text().replace("stage: sft", "stage: dpo"))
    runs = {}
    for mode, nproc, bs in (("none", 1, 2 * B), ("ddp", 2, B)):
        out = tmp_path / mode
        overrides = [f"train.output_dir={out}", f"train.batch_size={bs}"]
        if mode != "none":
            overrides.append(f"train.distributed={mode}")
        run_train(cfg, overrides, nproc=nproc)
        runs[mode] = metrics(out)
    assert_steps_close(runs["none"], runs["ddp"])
    for a, b in zip(runs["none"], runs["ddp"], strict=True):
        assert a["rewards/margin"] == pytest.approx(b["rewards/margin"], rel=1e-4, abs=1e-6)
    assert_weights_close(final_weights(tmp_path / "none"), final_weights(tmp_path / "ddp"))
