"""Finding the decoder layers of a causal LM (plain, peft-wrapped, DDP-wrapped or a VLM)
and choosing the focus layers. Used by the attention probe and the focus report."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

__all__ = ["default_focus_layers", "find_decoder_layers", "normalise_layers", "unwrap_model"]


def default_focus_layers(num_layers: int, fraction: float = 1 / 3) -> list[int]:
    """The last ``fraction`` of ``num_layers`` layers (at least one), ascending.

    ``round`` rather than ``ceil``: 30 * (1/3) is 10.000000000000002 in floats.
    """
    if int(num_layers) != num_layers or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    n = min(num_layers, max(1, round(num_layers * fraction)))
    return list(range(num_layers - n, num_layers))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / FSDP wrappers and a peft ``PeftModel``."""
    while isinstance(getattr(model, "module", None), nn.Module):  # DistributedDataParallel
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        model = get_base()
    return model


_LAYER_PATHS = (
    "model.layers",  # *ForCausalLM (Llama, Qwen2/3, Gemma2/3 text, Mistral, SmolLM...)
    "layers",  # a bare *Model
    "model.language_model.layers",  # Gemma3ForConditionalGeneration and other VLMs
    "language_model.layers",
    "model.text_model.layers",
    "language_model.model.layers",
)


def _is_attention_layer(layer: nn.Module) -> bool:
    attn = getattr(layer, "self_attn", None)
    return attn is not None and hasattr(attn, "q_proj") and hasattr(attn, "k_proj")


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_stack(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(the module owning the decoder layers, the layers)."""
    base = unwrap_model(model)
    for path in _LAYER_PATHS:
        layers = _get_path(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) and all(map(_is_attention_layer, layers)):
            owner_path = path.rsplit(".", 1)[0] if "." in path else ""
            owner = _get_path(base, owner_path) if owner_path else base
            return owner, layers
    # Fallback: the shallowest ModuleList named "layers" of attention layers, skipping
    # vision/audio towers.
    found = []
    for name, module in base.named_modules():
        if not name.endswith("layers") or not isinstance(module, nn.ModuleList) or not len(module):
            continue
        if any(w in name.lower() for w in ("vision", "audio", "visual", "image")):
            continue
        if all(map(_is_attention_layer, module)):
            found.append((name.count("."), name, module))
    if not found:
        raise ValueError(
            f"cannot find the decoder layers of {type(base).__name__}: expected a ModuleList "
            "`model.layers` (or `layers`, `model.language_model.layers`) whose layers have "
            "`self_attn.q_proj` and `self_attn.k_proj`"
        )
    _, name, layers = min(found, key=lambda t: (t[0], t[1]))
    owner_name = name.rsplit(".", 1)[0] if "." in name else ""
    return (base.get_submodule(owner_name) if owner_name else base), layers


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of ``model`` (plain HF causal LM, peft model, or VLM)."""
    return find_stack(model)[1]


def normalise_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return default_focus_layers(num_layers)
    out = []
    for i in layers:
        if int(i) != i:
            raise ValueError(f"layer indices must be integers, got {i!r}")
        j = int(i) + num_layers if i < 0 else int(i)
        if not 0 <= j < num_layers:
            raise ValueError(f"layer index {i} out of range for a model with {num_layers} layers")
        out.append(j)
    if not out:
        raise ValueError("layers must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate layer indices in {list(layers)}")
    return out


def _passthrough(hidden_states, *args, **kwargs):
    return hidden_states


@contextlib.contextmanager
def _skipped(layers: Sequence[nn.Module], hook: Any):
    """Inside the block ``layers`` return their input unchanged; ``hook`` (a removable handle) goes at the end."""
    for layer in layers:
        layer.forward = _passthrough
    try:
        yield
    finally:
        hook.remove()
        for layer in layers:
            del layer.forward


@contextlib.contextmanager
def start_at_layer(model: nn.Module, index: int, hidden: Any) -> Iterator[None]:
    """Inside the block, a forward of ``model`` skips layers ``0..index-1`` and feeds
    ``hidden`` (what the clean pass gave layer ``index``) to layer ``index``.

    Exact when only layers >= ``index`` change (an attention edit there): the lower layers
    would compute the same tensor again. A ``hidden`` that is part of the clean graph lets
    gradients reach the lower layers' LoRA weights through it, once, in the joint backward.
    Not valid under activation checkpointing (the re-run in backward would see the
    restored layers): callers fall back to a full forward then.
    """
    layers = find_decoder_layers(model)
    if index == 0:
        yield
        return

    def feed(module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    with _skipped(layers[:index], layers[index].register_forward_pre_hook(feed, with_kwargs=True)):
        yield


@contextlib.contextmanager
def replace_stack_output(model: nn.Module, hidden: Any) -> Iterator[None]:
    """Inside the block, a forward of ``model`` skips every decoder layer and gives ``hidden`` to
    what follows them (the final norm, the LM head, any logit soft-cap), as the last layer's output."""
    layers = find_decoder_layers(model)
    with _skipped(layers, layers[-1].register_forward_hook(lambda module, args, output: hidden)):
        yield
