"""Typed config sections (contract names from DESIGN.md §1). Unknown keys are errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strop.config.methods import LoraMethod, Method

# Stages whose rows are token streams that packing may concatenate (pt, sft).
PACKING_STAGES = ("pt", "sft")


class Section(BaseModel):
    # allow_inf_nan: a learning rate (or any number) of inf or nan is a config error, not a run
    # that trains to NaN and exits 0.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(Section):
    name: str = "smollm2-135m-instruct"
    """Known model name, local HF dir, or .gguf file."""
    dtype: str = "auto"
    """Weight dtype: auto (fp32 on CPU, bf16 on capable GPUs) | fp32 | bf16 | fp16."""
    attn: Literal["sdpa", "eager"] = "sdpa"
    """sdpa: fused kernels, one causal call per packed document (strop.models.attention);
    eager: the reference path, packed documents isolated by an explicit 4-D mask."""


class DataSection(Section):
    train: str | list[str] = ""
    """Training file(s): .jsonl .json .csv .parquet."""
    eval: float | str | None = 0.1
    """A fraction of train held out (deterministic by seed), a path, or null."""
    format: Literal[
        "auto", "alpaca", "sharegpt", "messages", "text", "preference", "kto", "prompt"
    ] = "auto"
    text_field: str = "text"
    max_length: int = Field(1024, ge=8)
    packing: bool = True
    share_prefix: bool | Literal["auto"] = "auto"
    """Documents of a micro-batch that open with the same non-target tokens (a common system
    prompt) compute them once; every document still attends to all of them, so loss and
    gradients are unchanged. Works for stages pt/sft with model.attn: sdpa and methods other
    than prompt learning: auto turns it on exactly there, true refuses any other setting."""
    mask: Literal["assistant", "last", "all"] = "assistant"
    """Which tokens carry loss in chat data: all assistant turns, the last one, or everything."""
    truncation: Literal["right", "drop"] = "right"
    """Over-long samples: cut at max_length (right) or drop them. Either way a sample left with
    no target token is dropped and counted."""
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    """Stop before training if more than this share of rows is malformed."""


class TrainSection(Section):
    output_dir: str = "runs/my-run"
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    """Sequences (or packed rows) per micro-batch per process."""
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2.0e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw"
    """adamw: torch's (fused); the rest bitsandbytes': 8-bit blockwise moments and/or paged
    moments (CUDA unified memory, spilled to CPU under memory pressure; unpaged on CPU)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = Field(0.03, ge=0)
    """Warmup as a fraction of total steps (< 1) or a number of steps (>= 1)."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float | None = 1.0
    seed: int = 42
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(100, ge=0)
    eval_tasks: list[dict[str, Any]] = Field(default_factory=list)
    """`strop eval` tasks (generation, perplexity, multiple_choice, classification, retrieval)
    run on the model being trained every eval_every steps and at the end; logged as
    eval/<task>/<metric>."""
    save_every: int = Field(200, ge=0)
    keep_last: int = Field(2, ge=1)
    resume: str = "auto"
    """auto (newest committed checkpoint in output_dir) | never | a checkpoint path."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision. auto = bf16 autocast on bf16-capable GPUs and on CPUs with native bf16
    matmul (AVX512-BF16/AMX), fp32 elsewhere. Weights and optimizer state stay fp32."""
    gradient_checkpointing: bool = False
    nan_policy: Literal["skip", "stop"] = "skip"
    """On a NaN/inf loss or gradient: skip the update and count it, or stop naming the step."""
    max_nan_skips: int = Field(10, ge=0)
    loss_chunk: int = Field(1024, ge=16)
    """Target positions per LM-head chunk: full-vocabulary logits never exist for more."""
    distributed: Literal["none", "ddp", "fsdp2"] = "none"
    tensorboard: bool = True
    progress: bool = True
    save_merged: bool = False
    """Adapter methods: also write final-merged/ (adapter folded into the base)."""


class ReferenceOptions(Section):
    reference: Literal["precompute", "model", "adapter_off"] = "precompute"
    """precompute: one pass before training stores reference log-probs (no reference model in
    memory); model: a separate frozen model; adapter_off: the policy with adapters disabled."""
    reference_model: str | None = None
    """reference: model only; default the policy's base model (model.name)."""


class DPOSection(ReferenceOptions):
    beta: float = Field(0.1, gt=0)
    loss: Literal["sigmoid", "robust", "ipo", "ipo_mean", "hinge"] = "sigmoid"
    """ipo: the paper's margin of summed response log-ratios; ipo_mean: of per-token mean
    log-ratios (TRL's IPO), which the same beta scales differently."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Preference-label noise e: cDPO with loss sigmoid, the unbiased estimator with robust."""
    nll_weight: float = Field(0.0, ge=0)
    """RPO: weight of an NLL (SFT) term on the chosen response, per token."""


class SimPOSection(Section):
    beta: float = Field(2.0, gt=0)
    gamma: float = Field(1.0, ge=0)
    """Target reward margin."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class ORPOSection(Section):
    beta: float = Field(0.1, gt=0)
    """lambda: weight of the odds-ratio term beside the NLL on chosen."""


class KTOSection(ReferenceOptions):
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    """Class weights; the paper keeps w_D * n_D / (w_U * n_U) in [1, 4/3]."""


class RMSection(Section):
    use_margin: bool = True
    """Subtract a pair's ``margin`` field (0 where absent) inside the Bradley-Terry loss."""
    center_weight: float = Field(0.0, ge=0)
    """Centering regulariser c * (r_chosen + r_rejected)^2 (e.g. 0.01)."""


class RewardSpec(Section):
    name: str
    """A registered reward (strop.train.rewards.REWARDS) or ``module:function``."""
    weight: float = 1.0
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the function (e.g. ``field``, ``pattern``, ``path``)."""


class GRPOSection(Section):
    group_size: int = Field(8, ge=2)
    """Completions sampled per prompt; advantages are normalised within each group."""
    beta: float = Field(0.04, ge=0)
    """Weight of the k3 KL penalty to the reference (0: no reference is kept or scored)."""
    rewards: list[RewardSpec | str] = Field(default_factory=list)
    """Reward functions, summed with their weights: names or {name, weight, args}."""
    max_new_tokens: int = Field(256, ge=1)
    num_iterations: int = Field(1, ge=1)
    """Optimizer steps per batch of rollouts (> 1: importance ratios vs the sampling policy)."""
    aggregation: Literal["sequence_mean", "token_mean", "dr_grpo"] = "sequence_mean"
    scale_rewards: bool = True
    """Divide advantages by the group's reward std (Dr. GRPO: false)."""
    reward_std: Literal["population", "sample"] = "population"
    """That std over the group: population (divide by G, the paper's) or sample (G - 1, TRL's;
    ~1.15x larger at G = 4, so advantages ~0.87x)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (zero advantage; DAPO)."""
    refill_rounds: int = Field(0, ge=0)
    """With dynamic_sampling: sample up to this many further batches of prompts to replace
    dropped groups (DAPO's refill; uses more prompts per step). 0 = train on fewer groups."""
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float | None = Field(None, gt=0)
    """Upper clip range (DAPO clip-higher); default ``epsilon``."""
    reference: Literal["auto", "model", "adapter_off"] = "auto"
    """auto: adapter_off for adapter methods, else a frozen copy of the base (model)."""
    reference_model: str | None = None

    def reward_specs(self) -> list[RewardSpec]:
        return [RewardSpec(name=r) if isinstance(r, str) else r for r in self.rewards]


class PPOSection(Section):
    rewards: list[RewardSpec | str] = Field(default_factory=list)
    """Sequence scores, summed with their weights: names or {name, weight, args}; a trained
    reward model is {name: reward_model, args: {path: runs/rm/final}}."""
    samples_per_prompt: int = Field(1, ge=1)
    """Completions sampled per prompt and rollout."""
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    num_iterations: int = Field(1, ge=1)
    """Optimizer steps per batch of rollouts ("PPO epochs"; > 1: importance ratios)."""
    epsilon: float = Field(0.2, gt=0)
    """Policy clip range."""
    value_clip: float = Field(0.2, gt=0)
    """Value clip range around the rollout-time values."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss beside the policy loss."""
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    kl_coef: float = Field(0.05, ge=0)
    """KL weight beta to the reference (0: no reference is kept or scored)."""
    kl_penalty: Literal["reward", "loss"] = "reward"
    """reward: -beta * (log pi - log pi_ref) added to every token's reward (InstructGPT);
    loss: beta * k3 KL in the loss, as GRPO."""
    adaptive_kl: bool = False
    """Adapt beta towards ``kl_target`` (Ziegler et al., 2019)."""
    kl_target: float = Field(6.0, gt=0)
    """Target KL per completion (nats, summed over its tokens) for adaptive_kl."""
    kl_horizon: float = Field(10000, gt=0)
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    missing_eos_penalty: float = Field(0.0, ge=0)
    """Subtracted from the score of completions cut at max_new_tokens (no stop token)."""
    value_trunk_grad: bool = True
    """The value loss also trains the shared trunk (false: the value head learns alone on
    detached hidden states)."""
    reference: Literal["auto", "model", "adapter_off"] = "auto"
    """auto: adapter_off for adapter methods, else a frozen copy of the base (model)."""
    reference_model: str | None = None

    def reward_specs(self) -> list[RewardSpec]:
        return [RewardSpec(name=r) if isinstance(r, str) else r for r in self.rewards]


# Each stage-specific section is read by exactly one stage: elsewhere it would do nothing, so a
# config that sets it is refused rather than silently ignored.
STAGE_SECTIONS = ("dpo", "simpo", "orpo", "kto", "rm", "grpo", "ppo")


class Config(Section):
    model: ModelSection = ModelSection()
    stage: Literal["pt", "sft", "rm", "dpo", "orpo", "simpo", "kto", "ppo", "grpo"] = "sft"
    method: Method = Field(default_factory=lambda: LoraMethod(name="lora"))
    """A tagged union on ``name`` (strop.config.methods): each method its own strict keys."""
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    # Filled with defaults for the stage that reads them; None (and refused if set) elsewhere.
    dpo: DPOSection | None = None
    simpo: SimPOSection | None = None
    orpo: ORPOSection | None = None
    kto: KTOSection | None = None
    rm: RMSection | None = None
    grpo: GRPOSection | None = None
    ppo: PPOSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _stage_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        stage = data.get("stage", "sft")
        given = [s for s in STAGE_SECTIONS if data.get(s) is not None]
        stray = [s for s in given if s != stage]
        if stray:
            s = stray[0]
            raise ValueError(
                f"{s}: this section is read only by stage {s}, and the config's stage is "
                f"{stage}; remove it or set stage: {s}"
            )
        if stage in STAGE_SECTIONS and data.get(stage) is None:
            data = {**data, stage: {}}
        return data

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Config:
        if not self.data.train:
            raise ValueError("data.train: required (path to the training file)")
        if self.stage == "grpo" and not self.grpo.rewards:
            raise ValueError("grpo.rewards: stage grpo needs at least one reward function")
        if self.stage == "ppo" and not self.ppo.rewards:
            raise ValueError(
                "ppo.rewards: stage ppo needs a reward: a function or "
                "{name: reward_model, args: {path: <stage rm final/>}}"
            )
        if "packing" in self.data.model_fields_set and self.data.packing and not self.packs:
            raise ValueError(
                f"data.packing: stage {self.stage} scores whole sequences or pairs one per row, "
                "so it does not pack; remove data.packing or set it to false"
            )
        check_method_fits(self)
        if self.train.optimizer != "adamw" and self.train.distributed == "fsdp2":
            raise ValueError(
                f"train.optimizer: {self.train.optimizer} (bitsandbytes) cannot update "
                "FSDP2-sharded parameters; use train.optimizer: adamw or train.distributed: ddp"
            )
        return self

    @property
    def packs(self) -> bool:
        """Rows are packed: data.packing, for the stages whose rows are token streams."""
        return self.data.packing and self.stage in PACKING_STAGES

    @property
    def shares_prefixes(self) -> bool:
        """data.share_prefix resolved: true, or auto where the run allows it."""
        setting = self.data.share_prefix
        return setting is True or (setting == "auto" and share_prefix_obstacle(self) is None)


def share_prefix_obstacle(cfg: Config) -> str | None:
    """Why documents of this run cannot share prefixes, or None."""
    if cfg.stage not in PACKING_STAGES:
        return f"stage {cfg.stage} scores whole sequences; only stages pt and sft share prefixes"
    if cfg.model.attn != "sdpa":
        return "it needs strop's per-document attention: set model.attn: sdpa"
    if cfg.method.uses_virtual_tokens:
        return f"method {cfg.method.name} gives every document its own virtual tokens"
    return None


def check_method_fits(cfg: Config) -> None:
    """Refuse, before any training, a method combined with settings it cannot honour."""
    m = cfg.method
    if cfg.train.save_merged and m.not_mergeable:
        raise ValueError(
            f"train.save_merged: method {m.name} cannot be merged into the base weights "
            f"({m.not_mergeable}); set train.save_merged: false"
        )
    if cfg.stage in m.refused_stages:
        raise ValueError(f"stage: method {m.name} cannot train stage {cfg.stage} ({m.refused_why})")
    if m.uses_virtual_tokens and cfg.packs and cfg.model.attn != "sdpa":
        raise ValueError(
            f"data.packing: method {m.name} gives every packed document its own virtual "
            "tokens through strop's per-document attention, which needs model.attn: sdpa; "
            "set model.attn: sdpa or data.packing: false"
        )
    if m.kv_prefix and cfg.train.gradient_checkpointing:
        raise ValueError(
            f"train.gradient_checkpointing: method {m.name} puts its prefix in the "
            "key/value cache, which transformers drops inside checkpointed layers; set "
            "train.gradient_checkpointing: false"
        )
    why = share_prefix_obstacle(cfg)
    if cfg.data.share_prefix is True and why:
        raise ValueError(f"data.share_prefix: {why}; or set data.share_prefix: false")
