"""Run folders, read in one place: what ``afa-llm train`` wrote, what ``afa-llm merge`` wrote, and the
scorer and data set a command resolves from them.

A run folder holds ``config.yaml`` (the resolved `TrainConfig`), ``adapter/`` (a peft adapter) and
``results.json``. A merged folder (`afa_llm.inference.merge`) holds ``afa_merge.json``, which keeps its
run's prompt and class names. `resolve_scorer` turns a run (or a merged folder, or neither) plus the
options given on a command line into a `ScorerSpec` and a `DataSpec`: options given win, then the
run's, then the defaults (`afa_llm.defaults`).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from afa_llm.config import TrainConfig, load_config
from afa_llm.deprecations import truncation_name
from afa_llm.errors import UserError
from afa_llm.model.adapters import adapter_classes, check_adapter_scale, resolve_adapter_dir
from afa_llm.specs import (DATA_KEYS, PROMPT_KEYS, DataSpec, Resolved, ScorerSpec, class_names_for, parse_label_words,
                           parse_names)

if TYPE_CHECKING:
    from afa_llm.data.loading import ClassificationData
    from afa_llm.data.shortcut import ShortcutSpec

MERGE_INFO = "afa_merge.json"
RUN_PROMPT_KEYS = ("data", *PROMPT_KEYS)  # what a merged folder records about its training prompt


@dataclass
class RunInfo:
    """A training run folder, or a bare adapter folder (then ``run_dir`` is None)."""

    adapter_dir: Path
    run_dir: Path | None
    config: object | None  # afa_llm.config.TrainConfig
    results: dict | None

    @property
    def label_names(self) -> list[str] | None:
        """The class names the run trained on: results.json's (inferred from the data), else config.yaml's."""
        names = (self.results or {}).get("label_names") or getattr(self.config, "label_names", None)
        return list(names) if names else None

    def prompt(self) -> dict:
        """The run's `PROMPT_KEYS` ({} for a bare adapter): scoring must reuse them."""
        if self.config is None:
            return {}
        return {key: getattr(self.config, key) for key in PROMPT_KEYS}


def find_run(path: str) -> RunInfo:
    """Accept a run folder (with ``adapter/``) or an adapter folder (maybe inside a run)."""
    adapter_dir = resolve_adapter_dir(path)
    run_dir = adapter_dir.parent if adapter_dir.name == "adapter" else adapter_dir
    if not (run_dir / "config.yaml").exists() and not (run_dir / "results.json").exists():
        return RunInfo(adapter_dir, None, None, None)
    return RunInfo(adapter_dir, run_dir, read_run_config(run_dir), read_results(run_dir))


def read_run_config(run_dir: Path) -> TrainConfig | None:
    """The run's resolved training config (a `TrainConfig`), or None if it has none."""
    file = run_dir / "config.yaml"
    return load_config(str(file), saved=True) if file.exists() else None


def read_json(file: Path) -> dict | None:
    """A JSON file's content, None if there is no such file, a one-line UserError if it is broken."""
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from exc


def read_results(run_dir: Path) -> dict | None:
    return read_json(run_dir / "results.json")


def read_merge_info(folder: str | Path) -> dict | None:
    """``afa_merge.json`` of a folder written by `afa-llm merge` (None for any other model); a truncation
    mode recorded under its old name reads as the new one."""
    info = read_json(Path(folder) / MERGE_INFO)
    if info and "truncation" in info:
        info["truncation"] = truncation_name(info["truncation"], quiet=True)
    return info


def base_model_spec(run: RunInfo, model: str | None) -> str:
    """--model, else the run's config.yaml model, else the adapter's recorded base folder."""
    if model:
        return model
    if run.config is not None:
        return run.config.model
    recorded = json.loads((run.adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if recorded and Path(recorded, "config.json").exists():
        return recorded
    raise UserError(f"{run.adapter_dir} is not inside a run folder with config.yaml; pass --model")


# ---- resolving a scorer ------------------------------------------------------------------
def _saved_settings(adapter: str | None, model: str | None) -> tuple[dict, object, str | None]:
    """What the run (or merged folder) was trained with: prompt keys, model, label names; its config;
    and the adapter folder."""
    if adapter:
        run = find_run(adapter)
        saved = {**run.prompt(), "label_names": run.label_names} if run.config is not None else {}
        if not saved:
            print(f"note: {adapter} is a bare adapter with no run settings; using the default prompt", file=sys.stderr)
        saved["model"] = base_model_spec(run, model)
        if adapter_classes(run.adapter_dir) is not None:  # a bare classifier adapter says so itself
            saved["head"] = "classifier"
        return saved, run.config, str(run.adapter_dir)
    info = read_merge_info(model) or {} if model else {}
    saved = {key: info.get(key) for key in (*PROMPT_KEYS, "label_names")}
    saved["model"] = model
    from afa_llm.model.loading import sequence_classifier_folder  # transformers: not at start-up

    classifier = sequence_classifier_folder(model) if model else None
    if classifier is not None:  # a merged classifier (ours, or any *ForSequenceClassification folder)
        saved["head"] = "classifier"
        saved["label_names"] = classifier_label_names(classifier, model)
    return saved, None, None


def classifier_label_names(config: dict, folder: str) -> list[str]:
    """The class names of a sequence-classifier folder, from its ``id2label`` (transformers' defaults
    ``LABEL_0``, ... name no class, so they are refused)."""
    id2label = config.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
    if not names or None in names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        raise UserError(f"{folder} is a sequence classifier without id2label in config.json, so its class names "
                        "are unknown; set id2label (afa-llm merge writes it)")
    return names


def resolve_scorer(adapter: str | None, model: str | None, given: dict | None = None,
                   require_source: bool = False) -> Resolved:
    """The scorer and data set for ``--adapter`` / ``--model`` and the options ``given`` (None: not given).

    ``given`` may hold the `ScorerSpec` fields quantization, dtype, adapter_scale (checked here, before any
    model loads) and the prompt keys (``label_words`` as a comma-separated string), and the `DataSpec`
    fields. The run's data keys apply when the data scored is the run's own (``data`` not given, or the
    same); ``require_source``: one of adapter/model is needed.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if require_source and not adapter and not model:
        raise UserError("give --adapter RUN (a training run folder) or --model SPEC (e.g. a merged folder)")
    saved, cfg, adapter_dir = _saved_settings(adapter, model)
    words = saved.get("label_words")
    scorer = ScorerSpec(adapter=adapter_dir)
    for key, value in {**saved, "label_words": parse_label_words(",".join(words)) if words else None}.items():
        if value is not None and key != "label_names":
            setattr(scorer, key, value)
    for key in ("quantization", "dtype"):  # given, else the run's, else ScorerSpec's default
        setattr(scorer, key, given.get(key) or getattr(cfg, key, None) or getattr(scorer, key))
    for key in PROMPT_KEYS:  # given on the command line: wins over the run's
        if key in given:
            setattr(scorer, key, parse_label_words(given[key]) if key == "label_words" else given[key])
    scorer.adapter_scale = given.get("adapter_scale", scorer.adapter_scale)  # a scoring choice, never the run's
    check_adapter_scale(scorer.adapter_scale, scorer.adapter)
    own_data = cfg is not None and given.get("data") in (None, cfg.data)
    data = DataSpec()
    for key in DATA_KEYS:
        if key in given:
            setattr(data, key, given[key])
        elif own_data:
            setattr(data, key, getattr(cfg, key))
    data = replace(data, label_names=parse_names(data.label_names))
    names = class_names_for(saved.get("label_names"), scorer.label_words)
    return Resolved(scorer, data, names, cfg, own_data)


# ---- the run's own data ------------------------------------------------------------------
def run_shortcut(cfg: TrainConfig, label_names: list[str]) -> ShortcutSpec | None:
    """The run's `ShortcutSpec` (None when ``shortcut_cue`` is empty); the class is checked by name."""
    from afa_llm.data.shortcut import ShortcutSpec

    if not cfg.shortcut_cue:
        return None
    if cfg.shortcut_label not in label_names:
        raise UserError(f"config key 'shortcut_label': {cfg.shortcut_label!r} is not a class of the data "
                        f"({', '.join(label_names)})")
    return ShortcutSpec(cfg.shortcut_cue, label_names.index(cfg.shortcut_label), cfg.shortcut_rate,
                        cfg.shortcut_purity, cfg.shortcut_position)


def plant_run_shortcut(cfg: TrainConfig, data: ClassificationData) -> ClassificationData:
    """``data`` with the run's cue planted in its train and validation splits; test stays clean. The validation
    split as it was stays beside them, for the gap at each validation. Training and the audit read a run's data
    through this, so both see the same sentences."""
    from datasets import DatasetDict  # not at start-up

    from afa_llm.data.shortcut import UNPLANTED_VALIDATION, check_cue_absent, plant_shortcut, split_seed_for

    spec = run_shortcut(cfg, data.label_names)
    splits = dict(data.splits)
    for name in ("train", "validation", "test"):
        check_cue_absent(splits[name]["text"], spec.cue, f"the {name} split of {cfg.data}")
    splits[UNPLANTED_VALIDATION] = splits["validation"]
    for name in ("train", "validation"):
        split = splits[name]
        texts, _ = plant_shortcut(split["text"], split["label"], spec, split_seed_for(cfg.split_seed, name))
        splits[name] = split.remove_columns("text").add_column("text", texts).select_columns(["text", "label"])
    return replace(data, splits=DatasetDict(splits))
