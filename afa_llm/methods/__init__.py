"""Training methods as plug-ins (see `methods.base` for the interface).

| name | module | what it adds to L_cls |
|---|---|---|
| ``lora`` | `methods.lora` | nothing (plain LoRA); ``masked_ce: random`` is the word-dropout control |
| ``afa`` | `methods.afa` | the masker policy gradient and the discriminator (docs/AFA.md) |
| ``at`` / ``vat`` | `methods.adversarial` | CE / KL under an adversarial perturbation of the attention scores |
| ``attn_rp`` | `methods.adversarial` | the same with a random direction of the same norm (their control) |
| ``iat`` | `methods.adversarial` | experimental: the released iAT code, which is exactly minus AT |
"""

from __future__ import annotations

import dataclasses
import textwrap

from afa_llm.methods.adversarial import AttentionAT, AttentionIAT, AttentionRP, AttentionVAT
from afa_llm.methods.afa import AFAMethod
from afa_llm.methods.base import MethodContext, MethodKeys, TrainingMethod
from afa_llm.methods.lora import LoRAMethod

METHODS: dict[str, type[TrainingMethod]] = {
    cls.name: cls for cls in (LoRAMethod, AFAMethod, AttentionAT, AttentionVAT, AttentionRP, AttentionIAT)
}

__all__ = ["METHODS", "MethodContext", "MethodKeys", "TrainingMethod", "build_method", "method_help"]


def build_method(name: str, keys: MethodKeys, ctx: MethodContext) -> TrainingMethod:
    return METHODS[name](keys, ctx)


def method_help() -> str:
    """The keys every run has, then each method with its own keys and defaults."""
    from afa_llm.config import SHARED_KEYS

    wrap = lambda text: textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="    ")  # noqa: E731
    lines = ["config keys of every run:", wrap(", ".join(SHARED_KEYS)), "",
             "methods (method=NAME) and their own keys; write them flat for the recipe's method, or under",
             "the method's name (afa: {num_masks: 8}, or afa.num_masks=8 on the command line):"]
    for name, cls in METHODS.items():
        label = " [EXPERIMENTAL]" if cls.experimental else ""
        own = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(cls.Keys))
        lines += [f"{name}{label}: {cls.summary}", wrap(own or "(no keys of its own)")]
    lines.append("See README.md ('Configuration') for what each key does.")
    return "\n".join(lines)


def _default(f) -> object:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
