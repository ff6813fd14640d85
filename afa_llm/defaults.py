"""Defaults written once: model, data, prompt, precision choices, LoRA targets and the text budget.

Every command, the recipe schema (`afa_llm.training.config`), the leaderboard and the TRL baseline
read these names, so a default cannot disagree with itself across the package.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_DATA = "rotten_tomatoes"
DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"

QUANTIZATIONS = ("nf4", "int8", "none")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
TRUNCATIONS = ("head", "head_tail")  # how over-long texts are cut (afa_llm.model.task.truncate)
HEADS = ("label_words", "classifier")  # how a prompt becomes class scores (afa_llm.model.heads)

# the keys that shape a prompt and its scoring: evaluating, merging or ranking an adapter must reuse its
# trained values
PROMPT_KEYS = ("template", "label_words", "max_text_tokens", "truncation", "head", "length_normalize")

# LoRA on the attention projections; ``lora_on_mlp`` adds the MLP's (our loop and the TRL baseline alike)
LORA_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")

# The text budget (tokens of the text itself; the template is never cut). One rule, two values:
# - training defaults to 96, because step time grows with it and the short data sets (Rotten
#   Tomatoes sentences, tweets) fit (docs/PERFORMANCE.md);
# - scoring without a run (zero-shot `eval`, `predict --model`) defaults to 256, long enough for
#   most reviews.
# Scoring a run reuses the run's budget (the prompt it was trained with) unless --max-text-tokens
# is given; every evaluation reports the share of texts it cut and warns past TRUNCATION_WARN_SHARE.
TRAIN_MAX_TEXT_TOKENS = 96
EVAL_MAX_TEXT_TOKENS = 256
TRUNCATION_WARN_SHARE = 0.10

# The focus metrics (afa_llm.evaluation.focus_metrics): rows for the lexicon metrics and the fake-focus share,
# rows of those for faithfulness (its masked passes are most of the cost), and the VADER |valence| that makes
# a word sentiment-bearing.
FOCUS_METRIC_ROWS = 256
FAITHFULNESS_ROWS = 64
LEXICON_THRESHOLD = 1.0


def lora_targets(attention_targets: Iterable[str], on_mlp: bool) -> list[str]:
    """The modules that get LoRA adapters."""
    return list(attention_targets) + (list(LORA_MLP_TARGETS) if on_mlp else [])
