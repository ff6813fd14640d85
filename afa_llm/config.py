"""Training configuration: one flat, typed dataclass, loaded from YAML and validated.

Configs are data: a recipe YAML sets any of these keys, and ``key=value`` overrides
on the command line take precedence. An unknown key, a wrong type or an out-of-range
value is a `UserError` that names the key. Every switch of docs/AFA.md is a key here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import UserError

Truncation = Literal["head", "head_tail"]
TRUNCATIONS: tuple[str, ...] = typing.get_args(Truncation)  # how over-long texts are cut (afa_llm.task)
# the keys that shape a prompt: evaluating, merging or ranking an adapter must reuse its trained values
PROMPT_KEYS = ("template", "label_words", "max_text_tokens", "truncation")


@dataclass
class TrainConfig:
    # --- run ---------------------------------------------------------------------
    output_dir: str = "runs/quickstart"
    overwrite: bool = False  # start over even if output_dir already holds checkpoints
    method: Literal["afa", "lora"] = "afa"
    seed: int = 0
    # --- model -------------------------------------------------------------------
    model: str = "smollm2-135m"
    quantization: Literal["nf4", "int8", "none"] = "nf4"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # autocast (Accelerate's mixed_precision) for the training steps and the run's own validation
    # and test evaluation; `afa-llm eval` uses `dtype`. bf16: 1.4-3x faster per forward with AMX.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # --- LoRA (the masker adapter, which is also the task model) ----------------
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lora_on_mlp: bool = False
    gradient_checkpointing: bool = False  # saves memory on large models, costs ~30% time
    # --- data and prompt -----------------------------------------------------------
    data: str = "rotten_tomatoes"
    text_column: str = "text"
    label_column: str = "label"
    label_names: Optional[list] = None
    split_seed: int = 0
    train_limit: Optional[int] = None  # low-data training: use the first N train examples
    template: str = "Review: {text}\nSentiment:"
    label_words: Optional[list] = None  # default: " " + class name
    max_text_tokens: int = 96
    truncation: Truncation = "head"
    # --- optimisation ------------------------------------------------------------
    steps: int = 100
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    # --- AFA (ignored by method=lora unless noted) -------------------------------
    focus_layers: Optional[list] = None  # None: the last third of the layers
    num_masks: int = 4  # G
    mask_ratio: float = 0.2  # rho
    uniform_mix: float = 0.1  # epsilon
    mask_mode: Literal["attention", "filler"] = "attention"
    filler_token: Optional[str] = None  # mask_mode=filler; default: the pad token
    significance: Literal["median", "fixed"] = "median"
    significance_threshold: float = 0.01  # tau, when significance=fixed
    median_window: int = 512
    reward: Literal["delta", "discriminator", "mix"] = "delta"
    reward_mix_weight: float = 0.5
    advantage_norm: bool = True
    entropy_coef: float = 0.0  # beta: + beta * H(focus) is added to the loss (negative favours spread)
    lambda_pg: float = 0.5
    lambda_pg_warmup_steps: int = 20
    discriminator: Literal["pair", "surrogate"] = "pair"
    discriminator_hidden: int = 256
    discriminator_lr: float = 1e-3
    measure_frac: float = 0.25  # surrogate: share of masks whose effect is measured
    masked_ce: Literal["none", "focus", "fake", "random"] = "none"  # also valid for method=lora
    masked_ce_weight: float = 0.5
    # --- evaluation, logging, checkpoints -------------------------------------------
    eval_every: int = 50
    eval_limit: Optional[int] = 200  # validation examples per periodic evaluation
    eval_batch_size: int = 32
    test_limit: Optional[int] = None
    evaluate_zero_shot: bool = True
    focus_eval_limit: int = 256  # test examples for the before/after fake-focus share
    save_every: int = 50
    keep_checkpoints: int = 2
    resume_from: Optional[str] = None  # "latest" or a checkpoint folder
    log_every: int = 1
    report_to: Literal["auto", "tensorboard", "none"] = "auto"
    progress: bool = True

    # ------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        checks = {
            "output_dir": bool(self.output_dir.strip()),
            "model": bool(self.model.strip()),
            "data": bool(self.data.strip()),
            "lora_r": self.lora_r > 0,
            "steps": self.steps > 0,
            "batch_size": self.batch_size > 0,
            "gradient_accumulation_steps": self.gradient_accumulation_steps > 0,
            "learning_rate": self.learning_rate > 0,
            "num_masks": self.num_masks >= 2,
            "mask_ratio": 0 < self.mask_ratio < 1,
            "uniform_mix": 0 <= self.uniform_mix <= 1,
            "measure_frac": 0 < self.measure_frac <= 1,
            "max_text_tokens": self.max_text_tokens > 0,
            "eval_every": self.eval_every >= 0,
            "save_every": self.save_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "lambda_pg": self.lambda_pg >= 0,
            "reward_mix_weight": 0 <= self.reward_mix_weight <= 1,
            "train_limit": self.train_limit is None or self.train_limit > 0,
            "lora_alpha": self.lora_alpha > 0,
            "lora_dropout": 0 <= self.lora_dropout < 1,
            "weight_decay": self.weight_decay >= 0,
            "lr_warmup_steps": self.lr_warmup_steps >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "median_window": self.median_window >= 1,
            "significance_threshold": self.significance_threshold >= 0,
            "lambda_pg_warmup_steps": self.lambda_pg_warmup_steps >= 0,
            "discriminator_hidden": self.discriminator_hidden >= 1,
            "discriminator_lr": self.discriminator_lr > 0,
            "masked_ce_weight": self.masked_ce_weight >= 0,
            "eval_limit": self.eval_limit is None or self.eval_limit > 0,
            "eval_batch_size": self.eval_batch_size > 0,
            "test_limit": self.test_limit is None or self.test_limit > 0,
            "focus_eval_limit": self.focus_eval_limit > 0,
            "log_every": self.log_every >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise UserError(f"config key {key!r} has an invalid value: {getattr(self, key)!r}")
        if self.method == "lora" and self.masked_ce not in ("none", "random"):
            raise UserError("config key 'masked_ce' must be none or random with method=lora (no focus masks)")
        if self.template.count("{text}") != 1:
            raise UserError("config key 'template' must contain '{text}' exactly once")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the annotated type of ``key``; YAML strings are parsed."""
    hint = _HINTS[key]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~") and optional):
        if optional:
            return None
        raise UserError(f"config key {key!r} must not be empty")
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise UserError(f"config key {key!r} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if isinstance(value, str) and base is float:
        try:  # YAML 1.1 reads "5e-3" (no dot) as a string; Python's float() does not
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, str) and base is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass  # reported below as a wrong type, naming the key
    if base is bool and isinstance(value, bool):
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base in (list, str) and isinstance(value, base):
        return value
    if base is list and isinstance(value, (int, str)):  # a single layer / module
        return [value]
    raise UserError(f"config key {key!r} expects {getattr(base, '__name__', base)}, got {value!r}")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a recipe YAML, apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"recipe not found: {path}")
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(raw, dict):
            raise UserError(f"recipe {path} must be a mapping of config keys")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like key=value")
        raw[key.strip()] = value
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"unknown config key {unknown[0]!r} (see `afa-llm train --help` for the keys)")
    values = {key: _coerce(key, value) for key, value in raw.items()}
    return TrainConfig(**values).validate()
