"""Bottleneck adapters (Houlsby et al., 2019), which peft does not implement.

Each adapter is ``h + up(act(down(h)))`` (hidden -> size -> hidden) applied to the output of a
decoder layer's attention block (``self_attn``) and/or feed-forward block (``mlp``), before the
layer adds it to the residual stream. ``up`` starts at zero, so training starts exactly at the
base model. The adapters are children of their decoder layer (``<layer>.strop_adapters.attn``)
and run from forward hooks on ``self_attn`` / ``mlp``: the model stays the transformers model
it was (generate, eval and the training loop need nothing special), no library code changes.

Saved format (``final/``), self-describing and independent of how strop holds the modules:
- ``strop_adapter.json``: format name and version, method, base model dir, hidden size, layer
  count, bottleneck size, positions, activation, whether layer norms trained, and the layout;
- ``strop_adapter.safetensors``: ``layers.<i>.<position>.{down,up}.{weight,bias}`` and, with
  trained norms, ``norms.<module path in the causal LM>.weight`` (their full trained values).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from strop.errors import StropError
from strop.models.logps import causal_lm_of

FORMAT, VERSION = "strop.bottleneck_adapter", 1
CONFIG_FILE, WEIGHTS_FILE = "strop_adapter.json", "strop_adapter.safetensors"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
SUBMODULES = {"attn": "self_attn", "mlp": "mlp"}  # position -> Llama-style module name
CHILD = "strop_adapters"


class Bottleneck(nn.Module):
    """``h + up(act(down(h)))``; kept in fp32 whatever the model's dtype (like peft's adapters),
    its output cast back to the hidden states' dtype."""

    def __init__(self, hidden: int, size: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden, size, dtype=torch.float32)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden, dtype=torch.float32)
        nn.init.zeros_(self.up.weight)  # the adapter starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)


def _hook(adapter: Bottleneck):
    def run(module, args, output):
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return run


def decoder_layers(model) -> nn.ModuleList:

    layers = getattr(causal_lm_of(model).get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(
        all(hasattr(layer, m) for m in SUBMODULES.values()) for layer in layers
    ):
        raise StropError(
            "method adapter: the model's decoder layers have no self_attn / mlp modules "
            "(Llama-style decoders such as Llama, Qwen2, Mistral, SmolLM2 are supported)"
        )
    return layers


def attach(model, settings: dict) -> None:
    """Add the adapters and their hooks; freeze every other weight except, with
    ``train_norms``, the decoder's norm weights. ``settings`` is what the JSON stores."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model)
    hidden = model.config.hidden_size
    device = next(model.parameters()).device
    for layer in layers:
        adapters = nn.ModuleDict(
            {
                pos: Bottleneck(hidden, settings["size"], settings["activation"]).to(device)
                for pos in settings["positions"]
            }
        )
        layer.add_module(CHILD, adapters)
        for pos, adapter in adapters.items():
            getattr(layer, SUBMODULES[pos]).register_forward_hook(_hook(adapter))
    if settings["train_norms"]:
        for _, norm in norm_modules(model):
            norm.weight.requires_grad_(True)
    model.strop_adapter = dict(settings)  # marks the model for save_final (strop.train.artifacts)


def norm_modules(model) -> list[tuple[str, nn.Module]]:
    """The decoder's normalisation layers (RMSNorm/LayerNorm: class name ends in 'Norm')."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if type(m).__name__.endswith("Norm")
        and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]


def _saved_name(key: str) -> str | None:
    """Model state-dict key -> saved tensor name (None: not part of the adapter)."""
    parts = key.split(".")
    if CHILD in parts:
        i = parts.index(CHILD)  # ... layers . <n> . strop_adapters . <pos> . down . weight
        return ".".join(["layers", parts[i - 1], *parts[i + 1 :]])
    return None


def save(model, state: dict[str, torch.Tensor], out: Path, base_dir: Path) -> None:
    settings = model.strop_adapter
    tensors = {n: t for k, t in state.items() if (n := _saved_name(k))}
    if settings["train_norms"]:
        for name, _ in norm_modules(model):
            tensors[f"norms.{name}.weight"] = state[f"{name}.weight"]
    config = {
        "format": FORMAT,
        "version": VERSION,
        "method": "adapter",
        "reference": "Houlsby et al., 2019, Parameter-Efficient Transfer Learning for NLP",
        "base_model_name_or_path": str(base_dir),
        "hidden_size": model.config.hidden_size,
        "num_layers": len(decoder_layers(model)),
        **settings,
        "layout": "h + up(act(down(h))) on the output of each decoder layer's self_attn "
        "(position attn) and mlp (position mlp), before the residual add",
        "tensors": "layers.<i>.<position>.{down,up}.{weight,bias}; norms.<module>.weight "
        "(trained norms, full values)",
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def load(model, adapter_dir: Path):
    """Attach the saved adapters to ``model`` (the base the JSON names) and load their weights."""
    where = Path(adapter_dir) / CONFIG_FILE
    try:
        config = json.loads(where.read_text())
    except json.JSONDecodeError as exc:
        raise StropError(f"{where}: invalid JSON ({exc.msg})") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise StropError(f"{where}: not a {FORMAT} version {VERSION} file")
    layers = decoder_layers(model)
    shape = (model.config.hidden_size, len(layers))
    if shape != (config["hidden_size"], config["num_layers"]):
        raise StropError(
            f"{where}: adapter for hidden size {config['hidden_size']} x {config['num_layers']} "
            f"layers, but the model has {shape[0]} x {shape[1]}"
        )
    keys = ("size", "positions", "activation", "train_norms")
    attach(model, {k: config[k] for k in keys})
    try:
        tensors = load_file(str(Path(adapter_dir) / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:  # truncated, or not safetensors at all
        raise StropError(
            f"{Path(adapter_dir) / WEIGHTS_FILE}: cannot read the adapter ({exc})"
        ) from None
    params = dict(model.named_parameters())
    want = {n for k in params if (n := _saved_name(k))}
    if config["train_norms"]:
        want |= {f"norms.{name}.weight" for name, _ in norm_modules(model)}
    if set(tensors) != want:
        missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
        raise StropError(
            f"{adapter_dir}/{WEIGHTS_FILE}: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for key, p in params.items():
            name = _saved_name(key) or (f"norms.{key}" if f"norms.{key}" in tensors else None)
            if name:
                p.copy_(tensors[name].to(p.dtype))
                p.requires_grad_(False)
    return model.eval()
