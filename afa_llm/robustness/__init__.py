"""Training past a shortcut: add-ons that combine with every training method (`afa_llm.methods`).

- `afa_llm.robustness.poe` (``debias: poe``): a product of experts with a bag-of-words bias model; the
  classification loss is taken through ``log_softmax(logits + log p_bias)``, prediction uses the model alone.
- `afa_llm.robustness.guard` (``guard: base | random | words``): hide the words the model under training
  leans on beyond the zero-shot base (or a control, or a given list) and make its output on the input agree
  with its output on the hidden copy.

The training loop builds them from the config (`afa_llm.robustness.build_addons`); a method never knows them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from afa_llm.config import TrainConfig
    from afa_llm.model.task import PromptTask
    from afa_llm.robustness.guard import Guard
    from afa_llm.robustness.poe import BiasModel


def build_addons(cfg: TrainConfig, task: PromptTask, texts: Sequence[str], labels: Sequence[int],
                 num_classes: int) -> tuple[Guard | None, BiasModel | None]:
    """The run's guard and bias model (None where the config has none)."""
    guard = bias = None
    if cfg.guard != "none":
        from afa_llm.robustness.guard import Guard

        guard = Guard(cfg, task, texts, labels, num_classes)
    if cfg.debias == "poe":
        from afa_llm.robustness.poe import fit_bias_model

        bias = fit_bias_model(texts, labels, num_classes, cfg.seed)
    return guard, bias
