"""Defaults written once: model, data, prompt, precision, LoRA targets, the text budget and the diagnostics.

Every command, the recipe schema (`afa_llm.config`), the leaderboard and the TRL baseline read these
names, so a default cannot disagree with itself across the package. The keys that describe a scorer and
a data set are the fields of `afa_llm.specs.ScorerSpec` and `afa_llm.specs.DataSpec` (``PROMPT_KEYS``,
``DATA_KEYS`` and the rest are derived there).
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_DATA = "rotten_tomatoes"
DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"

QUANTIZATIONS = ("nf4", "int8", "none")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
# Scoring, training and merging default to fp32 weights and compute: bf16 is 2-3x faster on a CPU with
# AMX but can flip a close call between two classes, and is emulated (slower) on a CPU without bf16 units
# (docs/PERFORMANCE.md). Training speeds up with ``mixed_precision: bf16`` instead, over fp32 weights.
DEFAULT_DTYPE = "fp32"
SCORING_QUANTIZATION = "none"  # scoring loads the base in full precision; training's own default is nf4
# how over-long texts are cut (afa_llm.model.task.truncate): start keeps the first N tokens, start_end the first
# quarter and the last three quarters of them (the old names head / head_tail: afa_llm.deprecations)
TRUNCATIONS = ("start", "start_end")
HEADS = ("label_words", "classifier")  # how a prompt becomes class scores (afa_llm.model.heads)
DEFAULT_TRUNCATION, DEFAULT_HEAD = TRUNCATIONS[0], HEADS[0]
TEXT_COLUMN, LABEL_COLUMN = "text", "label"  # of a local data file, unless --text-column / --label-column

# LoRA on the attention projections; ``lora_on_mlp`` adds the MLP's (our loop and the TRL baseline alike)
LORA_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")

# The text budget (tokens of the text itself; the template is never cut). One rule, two values:
# - training (`TrainConfig.max_text_tokens`) defaults to 96: a step's cost grows with the longest text
#   of its batch, and the short data sets fit whole (SmolLM2's tokenizer: Rotten Tomatoes sentences at
#   most 78 tokens, none cut; tweets 0.14% cut). Long texts need a recipe that says so
#   (recipes/imdb.yaml: 256 with start_end);
# - scoring without a run (zero-shot `eval`, `predict --model`, `PromptTask`, `ScorerSpec`) defaults
#   to 256: it does not know the data, a scoring pass is cheap next to a training step, and 256 holds
#   most short documents whole (IMDB reviews: median 221 tokens, 41% longer than 256 and cut).
# Scoring a run reuses the run's budget (the prompt it was trained with) unless --max-text-tokens
# is given; every evaluation reports the share of texts it cut and warns past TRUNCATION_WARN_SHARE.
TRAIN_MAX_TEXT_TOKENS = 96
EVAL_MAX_TEXT_TOKENS = 256
TRUNCATION_WARN_SHARE = 0.10

# The focus metrics (afa_llm.evaluation.focus_metrics), and what each costs next to scoring alone
# (docs/PERFORMANCE.md, benchmarks/eval_default_cost.py):
# - FOCUS_METRIC_ROWS: rows for the lexicon metrics and the fake-focus share. Their focus is read off
#   the scoring pass (the answer row's attention in the focus layers), a few percent of that pass, so
#   `eval` and a run's final evaluation keep them on by default;
# - faithfulness re-scores each of its rows as 30 masked copies (about 30 forward passes a row: 64 rows
#   cost about 2x scoring 1,000), so `eval --faithfulness-n` and `faithfulness_eval_limit` are opt-in
#   (FAITHFULNESS_ROWS, 0); `afa-llm focus` and `leaderboard --focus-metrics`, which are asked for the
#   focus, score FOCUS_FAITHFULNESS_ROWS;
# - LEXICON_THRESHOLD: the VADER |valence| that makes a word sentiment-bearing.
FOCUS_METRIC_ROWS = 256
FAITHFULNESS_ROWS = 0
FOCUS_FAITHFULNESS_ROWS = 64
LEXICON_THRESHOLD = 1.0


def lora_targets(attention_targets: Iterable[str], on_mlp: bool) -> list[str]:
    """The modules that get LoRA adapters."""
    return list(attention_targets) + (list(LORA_MLP_TARGETS) if on_mlp else [])
