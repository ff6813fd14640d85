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

from afa_llm.methods.adversarial import AttentionAT, AttentionIAT, AttentionRP, AttentionVAT
from afa_llm.methods.afa import AFAMethod
from afa_llm.methods.base import MethodContext, MethodKeys, TrainingMethod
from afa_llm.methods.lora import LoRAMethod

METHODS: dict[str, type[TrainingMethod]] = {
    cls.name: cls for cls in (LoRAMethod, AFAMethod, AttentionAT, AttentionVAT, AttentionRP, AttentionIAT)
}

__all__ = ["METHODS", "MethodContext", "MethodKeys", "TrainingMethod", "build_method"]


def build_method(name: str, keys: MethodKeys, ctx: MethodContext) -> TrainingMethod:
    return METHODS[name](keys, ctx)
