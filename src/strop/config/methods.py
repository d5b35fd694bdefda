"""The ``method`` section: one typed class per training method, chosen by ``name``.

``method`` is a tagged union: ``{name: lora, r: 8}`` validates as :class:`LoraMethod` and
nothing else, so an option of another method is an unknown key. Each class carries the facts
the rest of strop asks about a method (does it save an adapter, can it be merged into the base,
does it add virtual tokens, which stages can it not train) instead of name lists scattered
through the code. How a method changes the model lives in ``strop.models.transforms``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MethodBase(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    is_adapter: ClassVar[bool] = True
    """final/ holds an adapter dir (True) or a full HF model dir (False)."""
    not_mergeable: ClassVar[str | None] = None
    """Why the method cannot be folded into the base weights (None: it can, or needs no merge)."""
    refused_stages: ClassVar[tuple[str, ...]] = ()
    refused_why: ClassVar[str] = ""
    uses_virtual_tokens: ClassVar[bool] = False
    """Prompt learning: every document gets extra (virtual) positions the model attends to."""

    @property
    def kv_prefix(self) -> bool:
        """The method puts trainable vectors in every layer's key/value cache."""
        return False


class FullMethod(MethodBase):
    name: Literal["full"]
    is_adapter: ClassVar[bool] = False


class FreezeMethod(MethodBase):
    name: Literal["freeze"]
    is_adapter: ClassVar[bool] = False
    trainable_layers: int | list[int] = 2
    """An int N trains the last N decoder layers; a list trains those layer indices."""
    trainable_patterns: list[str] = Field(default_factory=list)
    """Regexes on parameter names that also train (e.g. 'norm', 'lm_head')."""
    train_embeddings: bool = False


class BitFitMethod(MethodBase):
    name: Literal["bitfit"]
    is_adapter: ClassVar[bool] = False
    also_train: list[str] = Field(default_factory=list)
    """Regexes on parameter names that train besides biases (e.g. 'norm')."""


class _LowRank(MethodBase):
    """The options LoRA, DoRA and QLoRA share, with the same meaning."""

    r: int = Field(16, ge=1)
    alpha: float = 32
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: str | list[str] = "all-linear"
    """'all-linear' (every linear layer but the LM head) or a list of module names."""
    rslora: bool = False
    """rsLoRA (Kalajdzievski, 2023): scale alpha/sqrt(r) instead of alpha/r."""
    init: str | bool = True
    """peft's init_lora_weights: True (B=0, so training starts at the base model), 'gaussian',
    'pissa', ... ; False gives random B (tests only)."""
    modules_to_save: list[str] = Field(default_factory=list)


class LoraMethod(_LowRank):
    name: Literal["lora"]
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    """LoRA+: learning rate of B = lr * ratio (the paper suggests ~16)."""
    fused: bool = True
    """Use strop's fused LoRA linear forward/backward (same peft modules and file format)."""


class DoraMethod(_LowRank):
    """LoRA's options but LoRA+ and the fused forward, which do not cover DoRA."""

    name: Literal["dora"]


class QloraMethod(_LowRank):
    """LoRA's options (but the fused forward, which is nn.Linear-only) plus the bitsandbytes
    quantisation of the frozen base."""

    name: Literal["qlora"]
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "bf16", "fp32"] = "auto"


class IA3Method(MethodBase):
    name: Literal["ia3"]
    targets: str | list[str] = Field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    """Module names (or a peft regex) to rescale; the default suits Llama-style names."""
    feedforward_modules: str | list[str] = Field(default_factory=lambda: ["down_proj"])
    """Targets whose input (not output) is rescaled; must be a subset of targets."""
    init: bool = True
    """peft's init_ia3_weights: True (ones, so training starts at the base model); False gives
    random vectors (tests only)."""


class AdapterMethod(MethodBase):
    name: Literal["adapter"]
    not_mergeable: ClassVar[str | None] = (
        "a bottleneck adapter is nonlinear, so no weight update reproduces it"
    )
    refused_stages: ClassVar[tuple[str, ...]] = ("rm",)
    refused_why: ClassVar[str] = "the reward model's value head would not train"
    size: int = Field(64, ge=1)
    """Bottleneck width: hidden -> size -> hidden."""
    positions: list[Literal["attn", "mlp"]] = Field(
        default_factory=lambda: ["attn", "mlp"], min_length=1
    )
    """Where adapters go: after the attention block (attn), the feed-forward block (mlp), or both."""
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    """Nonlinearity between the down and up projections."""
    train_norms: bool = False
    """Also train the decoder's layer norms (as Houlsby et al. did); saved with the adapter."""


class _PromptLearning(MethodBase):
    uses_virtual_tokens: ClassVar[bool] = True
    # The reward head and the online-RL rollout engine call the decoder without virtual tokens.
    refused_stages: ClassVar[tuple[str, ...]] = ("rm", "ppo", "grpo")
    refused_why: ClassVar[str] = (
        "the reward head and the RL rollout engine run the decoder without virtual tokens"
    )
    virtual_tokens: int = Field(20, ge=1)


class PromptMethod(_PromptLearning):
    name: Literal["prompt"]
    not_mergeable: ClassVar[str | None] = (
        "its virtual tokens are extra inputs, not a change to any weight"
    )
    init_text: str | None = None
    """Initialise the virtual tokens from this text's token embeddings (else random)."""


class PrefixMethod(_PromptLearning):
    name: Literal["prefix"]
    not_mergeable: ClassVar[str | None] = (
        "its key/value prefix is extra attention context, not a weight change"
    )
    projection: bool = False
    """Reparametrise the prefix through an MLP while training (peft's prefix_projection)."""
    projection_hidden: int = Field(512, ge=1)
    """Hidden width of that MLP (used only with projection: true)."""

    @property
    def kv_prefix(self) -> bool:
        return True


class PtuningMethod(_PromptLearning):
    name: Literal["ptuning"]
    not_mergeable: ClassVar[str | None] = (
        "its virtual tokens / deep prompts are extra inputs, not a weight change"
    )
    deep: bool = False
    """P-tuning v2: deep prompts at every layer (= prefix tuning without projection)."""
    encoder: Literal["mlp", "lstm"] | None = None
    """v1 only: the prompt encoder, mlp (default) or lstm (LSTM then MLP)."""
    encoder_hidden: int | None = Field(None, ge=1)
    """v1 only: the encoder's hidden width (default: the model's hidden size)."""
    encoder_layers: int | None = Field(None, ge=1)
    """lstm only: LSTM layers (default 2; the mlp encoder always has three linear layers)."""
    encoder_dropout: float | None = Field(None, ge=0, lt=1)
    """lstm only: dropout between LSTM layers (the mlp encoder has none)."""

    @property
    def kv_prefix(self) -> bool:
        return self.deep

    @model_validator(mode="after")
    def _v1_options_need_v1(self):
        v1 = ("encoder", "encoder_hidden", "encoder_layers", "encoder_dropout")
        used = [k for k in v1 if getattr(self, k) is not None]
        if self.deep and used:
            raise ValueError(f"{used[0]} applies to P-tuning v1 only; drop it or set deep: false")
        lstm_only = [
            k for k in ("encoder_layers", "encoder_dropout") if getattr(self, k) is not None
        ]
        if lstm_only and self.encoder != "lstm":
            raise ValueError(f"{lstm_only[0]} applies to encoder: lstm only")
        return self


Method = Annotated[
    FullMethod
    | FreezeMethod
    | BitFitMethod
    | LoraMethod
    | DoraMethod
    | QloraMethod
    | IA3Method
    | AdapterMethod
    | PromptMethod
    | PrefixMethod
    | PtuningMethod,
    Field(discriminator="name"),
]
"""A method section, validated by the class its ``name`` picks."""

METHOD_NAMES = (
    "full",
    "freeze",
    "bitfit",
    "lora",
    "dora",
    "qlora",
    "adapter",
    "prompt",
    "prefix",
    "ptuning",
    "ia3",
)
