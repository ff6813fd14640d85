"""The jobs of `afa-llm leaderboard`: its YAML read and checked, each (entry, run, data set) resolved
into a `ScorerSpec` and a `DataSpec`. The YAML format is documented in `afa_llm.reports.leaderboard`."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from afa_llm.deprecations import truncation_name
from afa_llm.errors import UserError
from afa_llm.evaluation.prior import CORRECTIONS
from afa_llm.specs import MODEL_KEYS, PROMPT_KEYS, DataSpec, ScorerSpec, parse_label_words, parse_names

TOP_KEYS = {"entries", "limit", "split_seed", "batch_size", "output_dir"}
ENTRY_KEYS = {"name", "run", "merged", "data", "split_seed", "seed", "group", "act", "prior_correction",
              *MODEL_KEYS, *PROMPT_KEYS}
DATA_KEYS = {"data", "text_column", "label_column", "label_names"}
SOURCES = ("model", "run", "merged")


@dataclass
class Job:
    """One (entry, data set) evaluation."""

    name: str
    group: str
    seed: int | None
    scorer: ScorerSpec
    data: DataSpec
    run_dir: Path | None = None
    limit: int | None = None
    act: str | None = None  # an act.json
    prior_correction: str | None = None
    focus_metrics: bool = False
    result: dict = field(default_factory=dict)


# ---- config -----------------------------------------------------------------------------
def read_config(path: str) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise UserError(f"cannot read the leaderboard config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list) or not raw["entries"]:
        raise UserError(f"{path}: expected a mapping with a non-empty list under 'entries'")
    _check_keys(raw, TOP_KEYS, f"{path}")
    for i, entry in enumerate(raw["entries"]):
        where = f"{path}: entry {i + 1}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be a mapping")
        _check_keys(entry, ENTRY_KEYS, where)
        if not entry.get("name"):
            raise UserError(f"{where}: missing key 'name'")
        if sum(key in entry for key in SOURCES) != 1:
            raise UserError(f"{where} ({entry['name']}): give exactly one of the keys model, run, merged")
        for item in _as_list(entry.get("data")):
            if isinstance(item, dict):
                _check_keys(item, DATA_KEYS, f"{where}: data item")
    return raw


def select_entries(raw: dict, names: list[str] | None, path: str) -> dict:
    """The config with only the entries whose name or group is in ``names`` (all when none are given)."""
    if not names:
        return raw
    labels = [{str(e["name"]), entry_group(e)} for e in raw["entries"]]
    for name in names:
        if not any(name in entry_labels for entry_labels in labels):
            known = ", ".join(sorted(set().union(*labels)))
            raise UserError(f"{path}: --only {name!r} matches no entry name or group (known: {known})")
    return {**raw, "entries": [e for e, entry_labels in zip(raw["entries"], labels) if entry_labels & set(names)]}


def entry_group(entry: dict) -> str:
    """The row an entry's runs are averaged into: its ``group``, else its name."""
    return str(entry.get("group", entry["name"]))


def _check_keys(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expand_runs(pattern: str, base: Path) -> list[Path]:
    """Run folders matching ``pattern`` (relative to the config's folder if not found as given)."""
    for candidate in (pattern, str(base / pattern)):
        matches = sorted(Path(p) for p in glob.glob(candidate) if Path(p).is_dir())
        if matches:
            return matches
    raise UserError(f"run folder not found: {pattern}")


def build_jobs(raw: dict, config_path: str, limit: int | None, need_model: bool = True) -> list[Job]:
    """One job per (entry, run, data set), with every scoring option resolved."""
    from afa_llm.model.adapters import resolve_adapter_dir
    from afa_llm.runs import RUN_PROMPT_KEYS, find_run, read_merge_info

    base = Path(config_path).parent
    jobs = []
    for entry in raw["entries"]:
        sources: list[tuple[dict, Path | None]] = []  # (settings from the run or merge, run folder)
        if "run" in entry:
            for run_dir in expand_runs(str(entry["run"]), base):
                run = find_run(str(run_dir))
                cfg = run.config
                settings = {"adapter": str(run.adapter_dir)}
                if cfg is not None:  # its split seed too: another seed's test split overlaps its train split
                    settings.update({k: getattr(cfg, k) for k in ("model", "seed", "split_seed", "quantization",
                                                                  "dtype", "text_column", "label_column",
                                                                  "label_names", *RUN_PROMPT_KEYS)})
                sources.append((settings, run.run_dir))
        elif "merged" in entry:
            info = read_merge_info(entry["merged"]) or {}
            sources.append(({"model": str(entry["merged"]), **{k: info[k] for k in RUN_PROMPT_KEYS if k in info}}, None))
        else:
            if entry.get("adapter"):
                resolve_adapter_dir(str(entry["adapter"]))  # fail before any evaluation
            sources.append(({"model": entry["model"], "adapter": entry.get("adapter")}, None))
        for settings, run_dir in sources:
            merged = {**settings, **{k: v for k, v in entry.items() if k not in ("data", "run", "merged")}}
            if merged.get("act"):
                merged["act"] = _act_path(str(merged["act"]), base)
            if need_model and not merged.get("model"):
                raise UserError(f"entry {entry['name']}: no model (the run has no config.yaml); add a 'model' key")
            data_items = _as_list(entry.get("data")) or ([settings["data"]] if settings.get("data") else [])
            if not data_items:
                raise UserError(f"entry {entry['name']}: missing key 'data'")
            for item in data_items:
                jobs.append(_job(entry, merged, item, raw, limit, run_dir))
    return jobs


def _act_path(path: str, base: Path) -> str:
    """An entry's act file, as given or relative to the YAML's folder; checked before any evaluation."""
    from afa_llm.act.calibration import load_act

    found = next((p for p in (Path(path), base / path) if p.is_file()), Path(path))
    load_act(found)
    return str(found)


def _job(entry: dict, settings: dict, item, raw: dict, limit: int | None, run_dir: Path | None) -> Job:
    """The job of one data item of an entry: the run's (or entry's) settings, then the item's data keys."""
    from afa_llm.model.adapters import check_adapter_scale

    data_item = item if isinstance(item, dict) else {"data": item}
    scorer = ScorerSpec()
    for key in ("model", "quantization", "dtype", "template", "max_text_tokens", "truncation", "head",
                "length_normalize"):
        if settings.get(key) is not None:
            setattr(scorer, key, truncation_name(settings[key]) if key == "truncation" else settings[key])
    words = settings.get("label_words")
    scorer.label_words = list(words) if isinstance(words, list) else parse_label_words(words)
    scorer.adapter = settings.get("adapter")
    scorer.adapter_scale = settings.get("adapter_scale", 1.0)  # the entry's, never the run's
    try:
        check_adapter_scale(scorer.adapter_scale, scorer.adapter)
    except UserError as exc:
        raise UserError(f"entry {entry['name']}: {exc}") from None
    data = DataSpec(data=data_item["data"])
    if data_item["data"] == settings.get("data"):  # the run's own data set: its columns apply
        for key in ("text_column", "label_column", "label_names"):
            if settings.get(key) is not None:
                setattr(data, key, settings[key])
    for key in ("text_column", "label_column", "label_names"):
        if key in data_item:
            setattr(data, key, data_item[key])
    data.label_names = parse_names(data.label_names)
    data.split_seed = _int(settings.get("split_seed", raw.get("split_seed", 0)), "split_seed")
    prior = settings.get("prior_correction")
    if prior not in (None, *CORRECTIONS):
        raise UserError(f"key 'prior_correction' must be one of {', '.join(CORRECTIONS)}, got {prior!r}")
    limit = limit if limit is not None else raw.get("limit")
    if limit is not None and _int(limit, "limit") <= 0:
        raise UserError(f"key 'limit' must be a positive number of examples, got {limit!r}")
    return Job(entry["name"], entry_group(entry), settings.get("seed"), scorer, data, run_dir, limit,
               settings.get("act"), prior)


def _int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"key {key!r} must be an integer, got {value!r}")
    return value
