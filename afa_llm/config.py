"""Training configuration: typed dataclasses, loaded from YAML and validated.

Configs are data. `TrainConfig` holds the keys every run has (model, LoRA, data,
optimisation, evaluation, checkpoints); each training method brings its own keys
(``methods.<name>.Keys``), which land in ``cfg.method_config``. In a recipe a method's
keys are written flat (for the recipe's own ``method``) or under the method's name, so
one recipe can serve several methods::

    method: afa
    steps: 100
    afa: {num_masks: 4, lambda_pg_warmup_steps: 10}   # used only when method=afa
    vat: {adv_eps: 1.0}

``key=value`` overrides on the command line take precedence (``afa.num_masks=8`` works too). An unknown
key, a key of another method, a wrong type or an out-of-range value is a `UserError` that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from afa_llm.defaults import (DEFAULT_DATA, DEFAULT_DTYPE, DEFAULT_HEAD, DEFAULT_MODEL, DEFAULT_TEMPLATE,
                              DEFAULT_TRUNCATION, DTYPE_NAMES, FAITHFULNESS_ROWS, FOCUS_METRIC_ROWS, HEADS,
                              LABEL_COLUMN, LEXICON_THRESHOLD, LORA_ATTENTION_TARGETS, QUANTIZATIONS, TEXT_COLUMN,
                              TRAIN_MAX_TEXT_TOKENS, TRUNCATIONS)
from afa_llm.deprecations import upgrade_config
from afa_llm.errors import UserError


@dataclass
class TrainConfig:
    # --- run ---------------------------------------------------------------------
    output_dir: str = "runs/quickstart"
    overwrite: bool = False  # start over even if output_dir already holds checkpoints
    method: str = "lora"  # a name in afa_llm.methods.METHODS
    seed: int = 0
    # --- model -------------------------------------------------------------------
    model: str = DEFAULT_MODEL
    quantization: Literal[QUANTIZATIONS] = "nf4"
    dtype: Literal[DTYPE_NAMES] = DEFAULT_DTYPE
    # autocast (Accelerate's mixed_precision) for the training steps and the run's own validation
    # and test evaluation; `afa-llm eval` uses `dtype`. bf16: 1.4-3x faster per forward with AMX.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # --- LoRA (the masker adapter, which is also the task model) ----------------
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list = field(default_factory=lambda: list(LORA_ATTENTION_TARGETS))
    lora_on_mlp: bool = False
    gradient_checkpointing: bool = False  # saves memory on large models, costs ~30% time
    # --- data and prompt -----------------------------------------------------------
    data: str = DEFAULT_DATA
    text_column: str = TEXT_COLUMN
    label_column: str = LABEL_COLUMN
    label_names: Optional[list] = None
    split_seed: int = 0
    # your own validation / test split: a file like data's (.csv/.jsonl/.parquet or a save_to_disk folder,
    # same columns) read as that split instead of drawn from data by split_seed; data then gives the train
    # split and whichever of the two is not given; the classes are the training data's
    validation_data: Optional[str] = None
    test_data: Optional[str] = None
    train_limit: Optional[int] = None  # low-data training: use the first N train examples
    template: str = DEFAULT_TEMPLATE
    label_words: Optional[list] = None  # default: " " + class name; a word may be several tokens
    # label_words: score each class by its label word's log-likelihood after the prompt (lm-eval's);
    # classifier: a linear layer on the last token's hidden state, started from the label words' LM-head rows
    # where each is one token (so step 0 equals label_words), saved with the adapter (modules_to_save)
    head: Literal[HEADS] = DEFAULT_HEAD
    length_normalize: bool = False  # label words of several tokens: divide the log-likelihood by the token count
    max_text_tokens: int = TRAIN_MAX_TEXT_TOKENS  # eval without a run: 256 (afa_llm.defaults says why)
    truncation: Literal[TRUNCATIONS] = DEFAULT_TRUNCATION
    # --- a planted shortcut (afa_llm.data.shortcut), off while shortcut_cue is empty -----------
    # the cue goes into shortcut_rate of shortcut_label's train and validation examples (validation
    # comes from the same cued distribution); shortcut_purity < 1 also cues other classes' examples;
    # the test split stays clean (`afa-llm stress` and results.json's "stress" score its views)
    shortcut_cue: str = ""
    shortcut_label: Optional[str] = None  # a class name of the data
    shortcut_rate: float = 0.5
    shortcut_purity: float = 1.0
    shortcut_position: Literal["random", "start", "end"] = "random"
    # --- training past a shortcut (afa_llm.robustness), with every method -----------------
    # debias: poe trains through log_softmax(logits + log p_bias) of a bag-of-words bias model
    debias: Literal["none", "poe"] = "none"
    # guard: hide the words the model leans on beyond the base (base), as many random candidates (random),
    # or guard_words (words), and make the output agree with the hidden copy's (afa_llm.robustness.guard)
    guard: Literal["none", "base", "random", "words"] = "none"
    guard_weight: float = 1.0
    guard_words: Optional[list] = None
    # guard_words from an `afa-llm audit --output` JSON, its top guard_words_top (read at load time)
    guard_words_from: Optional[str] = None
    guard_words_top: int = 3
    guard_loss: Literal["kl", "ce", "both"] = "kl"
    guard_every: int = 25  # steps between flag refreshes (base, random)
    guard_sticky: bool = True  # base, matched random: a flag holds to the end (false: it lapses; RESULTS, pilot)
    # flag a word whose audit score is at least this (base): a cue-free Rotten Tomatoes run tops out at 4.5 in
    # `afa-llm audit`, a learned name scores 7.0 (docs/RESULTS.md, "Finding the shortcut")
    guard_threshold: float = 5.0
    guard_random_count: int = 3  # words the random control flags per refresh; 0: as many as the measure flags
    guard_candidates: int = 64  # the most label-skewed words and pairs measured per refresh
    guard_sample: int = 4  # texts per candidate per refresh
    guard_min_count: int = 5  # occurrences a word needs to be a candidate
    # --- the classification loss ------------------------------------------------------
    # none | balanced (w_c = n / (C * n_c) over the training split, as sklearn) | [w_1, ..., w_C] in class
    # order; weights every cross-entropy on class logits (L_cls, the masked CE, AT's adversarial CE)
    class_weights: Any = "none"
    # --- optimisation ------------------------------------------------------------
    steps: int = 100
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    # --- shared by every method -------------------------------------------------------
    focus_layers: Optional[list] = None  # None: the last third of the layers (focus probe, AT/VAT layers)
    # --- evaluation, logging, checkpoints -------------------------------------------
    early_stopping_patience: Optional[int] = None  # stop after this many validations without improvement
    early_stopping_metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    select_best: bool = False  # adapter/ and the test score come from the best validation
    eval_every: int = 50
    eval_limit: Optional[int] = 200  # validation examples per periodic evaluation
    eval_batch_size: int = 32
    test_limit: Optional[int] = None
    evaluate_zero_shot: bool = True
    # test examples for the fake-focus share and the lexicon focus metrics, read off the test pass (a few percent of it)
    focus_eval_limit: int = FOCUS_METRIC_ROWS
    lexicon_threshold: float = LEXICON_THRESHOLD  # a word is sentiment-bearing if its VADER |mean valence| >= this
    # test examples for comprehensiveness / sufficiency: opt-in, each costs about 30 extra forward passes (0: skip)
    faithfulness_eval_limit: int = FAITHFULNESS_ROWS
    save_every: int = 50
    keep_checkpoints: int = 2
    resume_from: Optional[str] = None  # "latest" or a checkpoint folder
    log_every: int = 1
    report_to: Literal["auto", "tensorboard", "none"] = "auto"
    progress: bool = True
    # the method's own keys (methods.<name>.Keys), set by load_config; not a YAML key itself
    method_config: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.method_config is None and self.method in method_classes():  # built in code: the method's defaults
            self.method_config = method_classes()[self.method].Keys()

    def validate(self) -> "TrainConfig":
        checks = {
            "output_dir": bool(self.output_dir.strip()),
            "model": bool(self.model.strip()),
            "data": bool(self.data.strip()),
            "validation_data": self.validation_data is None or bool(self.validation_data.strip()),
            "test_data": self.test_data is None or bool(self.test_data.strip()),
            "lora_r": self.lora_r > 0,
            "steps": self.steps > 0,
            "batch_size": self.batch_size > 0,
            "gradient_accumulation_steps": self.gradient_accumulation_steps > 0,
            "learning_rate": self.learning_rate > 0,
            "max_text_tokens": self.max_text_tokens > 0,
            "eval_every": self.eval_every >= 0,
            "save_every": self.save_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "train_limit": self.train_limit is None or self.train_limit > 0,
            "lora_alpha": self.lora_alpha > 0,
            "lora_dropout": 0 <= self.lora_dropout < 1,
            "weight_decay": self.weight_decay >= 0,
            "lr_warmup_steps": self.lr_warmup_steps >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "eval_limit": self.eval_limit is None or self.eval_limit > 0,
            "eval_batch_size": self.eval_batch_size > 0,
            "test_limit": self.test_limit is None or self.test_limit > 0,
            "focus_eval_limit": self.focus_eval_limit > 0,
            "log_every": self.log_every >= 1,
            "early_stopping_patience": self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "shortcut_rate": 0 < self.shortcut_rate <= 1,
            "shortcut_purity": 0 < self.shortcut_purity <= 1,
            "shortcut_cue": self.shortcut_cue == self.shortcut_cue.strip(),
            "lexicon_threshold": 0 <= self.lexicon_threshold <= 4,
            "faithfulness_eval_limit": self.faithfulness_eval_limit >= 0,
            "guard_weight": self.guard_weight >= 0,
            "guard_every": self.guard_every >= 1,
            "guard_random_count": self.guard_random_count >= 0,
            "guard_candidates": self.guard_candidates >= 1,
            "guard_sample": self.guard_sample >= 1,
            "guard_min_count": self.guard_min_count >= 1,
            "guard_words_top": self.guard_words_top >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise UserError(f"config key {key!r} has an invalid value: {getattr(self, key)!r}")
        if (self.early_stopping_patience or self.select_best) and not self.eval_every:
            key = "early_stopping_patience" if self.early_stopping_patience else "select_best"
            raise UserError(f"config key {key!r} needs validations: set eval_every > 0")
        self.class_weights = _class_weights(self.class_weights)
        if self.guard_words_from and not self.guard_words:
            self.guard_words = _audit_words(self.guard_words_from, self.guard_words_top)
        if self.guard == "words" and not self.guard_words:
            raise UserError("config key 'guard_words' must list the words to hide when guard is 'words' "
                            "(or guard_words_from name an audit JSON)")
        if self.guard_words is not None and (not isinstance(self.guard_words, list)
                                             or not all(isinstance(w, str) and w.strip() for w in self.guard_words)):
            raise UserError(f"config key 'guard_words' must be a list of words, got {self.guard_words!r}")
        if self.shortcut_cue and not self.shortcut_label:
            raise UserError("config key 'shortcut_label' must name the class that shortcut_cue goes with")
        if self.template.count("{text}") != 1:
            raise UserError("config key 'template' must contain '{text}' exactly once")
        if self.method not in method_classes():
            raise UserError(f"config key 'method' must be one of {', '.join(method_classes())}, got {self.method!r}")
        if not isinstance(self.method_config, method_classes()[self.method].Keys):
            raise UserError(f"config of method {self.method} got the keys of another method")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Flat: the shared keys, then the method's own keys (what config.yaml holds)."""
        shared = {name: copy.deepcopy(getattr(self, name)) for name in SHARED_KEYS}
        return {**shared, **self.method_config.to_dict()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SHARED_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "method_config")


def _audit_words(path: str, top: int) -> list[str]:
    """The ``top`` best-ranked words of an `afa-llm audit --output` JSON (``guard_words_from``)."""
    try:
        candidates = json.loads(Path(path).read_text())["candidates"]
        words = [c["word"] for c in sorted(candidates, key=lambda c: c["rank"])[:top]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"config key 'guard_words_from': cannot read the audit's words from {path}: {e}") from None
    if not words:
        raise UserError(f"config key 'guard_words_from': {path} lists no candidates")
    return words


def _class_weights(value: Any) -> Any:
    """``class_weights``: "none", "balanced" or a list of positive numbers (YAML strings are parsed)."""
    if isinstance(value, str) and value not in ("none", "balanced"):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if value in ("none", "balanced", None):
        return value or "none"
    if (isinstance(value, list) and len(value) >= 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and v > 0 for v in value)):
        return [float(v) for v in value]
    raise UserError(f"config key 'class_weights' must be none, balanced or a list of positive numbers, one per "
                    f"class; got {value!r}")


def _coerce(key: str, value: Any, hints: dict[str, Any]) -> Any:
    """Check ``value`` against the annotated type of ``key``; YAML strings are parsed."""
    if key == "class_weights":
        return _class_weights(value)
    hint = hints[key]
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


def _read_recipe(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path} must be a mapping of config keys")
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep:
        raise UserError(f"override {item!r} must look like key=value")
    _apply_value(raw, key.strip(), value)


def _apply_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (``afa.num_masks`` sets a method's key) over the recipe; a mapping given for a method
    section (``afa={"num_masks": 8}``) updates the recipe's section instead of replacing it."""
    section, dot, inner = key.partition(".")
    if dot:  # afa.num_masks=8
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise UserError(f"config key {section!r} is not a section, so {key!r} cannot be set")
        target[inner] = value
    elif isinstance(value, dict) and isinstance(raw.get(key), dict):
        raw[key] = {**raw[key], **value}
    else:
        raw[key] = value


def method_classes() -> dict[str, Any]:
    from afa_llm.methods import METHODS  # late: the methods import torch and this module

    return METHODS


def _owners(key: str) -> list[str]:
    return [name for name, cls in method_classes().items() if key in _field_names(cls.Keys)]


def _field_names(keys_cls) -> set[str]:
    return {f.name for f in dataclasses.fields(keys_cls)}


def _method_keys(name: str, values: dict[str, Any], where: str):
    """Build and validate method ``name``'s keys from ``values`` (``where`` prefixes errors)."""
    keys_cls = method_classes()[name].Keys
    hints = typing.get_type_hints(keys_cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise UserError(f"unknown config key {where + unknown[0]!r} for method {name} "
                        "(see `afa-llm train --help` for each method's keys)")
    return keys_cls(**{k: _coerce(k, v, hints) for k, v in values.items()}).validate()


def load_config(path: str | None = None, overrides: list[str] | None = None, *, saved: bool = False,
                values: dict[str, Any] | None = None) -> TrainConfig:
    """Load a recipe YAML, apply ``key=value`` overrides, then ``values`` (keys given as Python values, as
    `afa_llm.train(**keys)` gives them), validate.

    ``saved=True`` reads a run's own config.yaml: keys of other methods (which configs
    written before methods were plug-ins held) are dropped instead of refused.
    """
    raw = _read_recipe(path)
    for item in overrides or []:
        _apply_override(raw, item)
    for key, value in (values or {}).items():
        _apply_value(raw, key, value)
    upgrade_config(raw, saved)  # old names (truncation: head) for one release; a run's own config.yaml silently
    methods = method_classes()
    method = str(raw.get("method", TrainConfig.method))
    if method not in methods:
        raise UserError(f"config key 'method' must be one of {', '.join(methods)}, got {method!r}")
    raw.setdefault(method, None)  # the chosen method's section, if any, is read below
    own = _field_names(methods[method].Keys)
    shared, flat = {}, {}
    for key, value in raw.items():
        if key in SHARED_KEYS:
            shared[key] = value
        elif key in methods:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise UserError(f"config key {key!r} must be a mapping of {key}'s keys")
            _method_keys(key, value, f"{key}.")  # every section is checked, the chosen one is used
        elif key in own:
            flat[key] = value
        elif _owners(key):
            if not saved:
                raise UserError(f"config key {key!r} belongs to method {'/'.join(_owners(key))}, not {method}; "
                                f"drop it, or put it under '{_owners(key)[0]}:'")
        else:
            raise UserError(f"unknown config key {key!r} (see `afa-llm train --help` for the keys)")
    hints = typing.get_type_hints(TrainConfig)
    values = {key: _coerce(key, value, hints) for key, value in shared.items()}
    method_config = _method_keys(method, {**(raw.get(method) or {}), **flat}, "")
    return TrainConfig(**values, method_config=method_config).validate()
