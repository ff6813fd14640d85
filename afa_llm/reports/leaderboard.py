"""``afa-llm leaderboard``: evaluate many models / runs on many data sets, one table.

A YAML file (experiments/leaderboard_example.yaml) has optional top-level ``limit``,
``split_seed``, ``batch_size``, ``output_dir`` and a list of ``entries``. Entry keys:
``name``; exactly one of ``model`` (a spec, optional ``adapter``), ``run`` (a run folder
or glob; model, quantization, dtype, split seed, prompt and data default to the run's
config.yaml) or ``merged`` (a folder from `afa-llm merge`); ``data`` (specs, or mappings
with ``data``/``text_column``/``label_column``/``label_names``); optional ``split_seed``,
``seed``, ``group``, ``quantization``, ``dtype``, ``template``, ``label_words``,
``max_text_tokens``, ``truncation``, ``adapter_scale`` (the adapter's LoRA update times it, in [0, 1]:
WiSE-FT weight interpolation, `afa_llm.model.adapters.scale_adapter`), ``act`` (an act.json from `afa-llm calibrate`, applied with
`afa_llm.act.calibration.act_enabled`; a path relative to the YAML's folder is found too),
``prior_correction`` (``normalize`` | ``offset`` | ``temperature``: `afa_llm.evaluation.prior`, fitted on the
entry's validation split). Entries with the same ``group`` (default: the name) form one row per data set: mean ± std over their runs.

Every (entry, data set) goes through `afa_llm.evaluation.evaluate.evaluate_dataset` on the test
split of the entry's split seed. Reports are cached in ``OUT/cache/<hash>.json``, keyed
by model, adapter (content hash), data, split seed, limit, template and label words, so a
re-run evaluates only what changed. ``--from-results`` evaluates nothing: it aggregates
the ``test`` and ``zero_shot`` blocks of each run's results.json. Outputs:
``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.png``; a row has accuracy and macro-F1 (mean ± std),
per-class F1, and the mean ECE and share of texts cut. ``--only NAME`` (repeatable) keeps the
entries with that name or group, e.g. to score some sources while others still train.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from dataclasses import dataclass, replace
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from afa_llm.defaults import FOCUS_FAITHFULNESS_ROWS, FOCUS_METRIC_ROWS
from afa_llm.data.loading import ClassificationData, load_data
from afa_llm.deprecations import first_spelling
from afa_llm.errors import UserError
from afa_llm.io_utils import check_writable_dir, write_json
from afa_llm.specs import DataSpec
from afa_llm.reports.leaderboard_jobs import Job, build_jobs, read_config, select_entries  # noqa: F401 (re-exported)
from afa_llm.reports.leaderboard_tables import write_csv, write_markdown, write_plot
from afa_llm.evaluation.prior import check_classes, correct_report, fit_from_report

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


FOCUS_N = FOCUS_METRIC_ROWS  # test rows for --focus-metrics (faithfulness: the first FOCUS_FAITHFULNESS_ROWS)
FOCUS_METRICS = ("lexicon_share", "lexicon_auprc", "comprehensiveness_gain")  # the leaderboard's focus columns


# ---- caching and evaluation ----------------------------------------------------------
def _fingerprint(path: str | None) -> object:
    """Content identity of a model / adapter / data path (sha256 for adapters and small files)."""
    from afa_llm.model.loading import file_sha256

    if not path or not Path(path).exists():
        return path
    target = Path(path)
    if target.is_file():
        stat = target.stat()
        small = stat.st_size < 1 << 28
        return [str(target.resolve()), file_sha256(target) if small else [stat.st_size, stat.st_mtime_ns]]
    if (target / "adapter_config.json").exists() or (target / "adapter" / "adapter_config.json").exists():
        from afa_llm.model.adapters import resolve_adapter_dir

        folder = resolve_adapter_dir(path)
        return sorted((f.name, file_sha256(f)) for f in folder.iterdir() if f.is_file())
    return [str(target.resolve())] + sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                            for f in target.iterdir() if f.is_file())


def _joined(value):
    return ",".join(value) if isinstance(value, list) else value


def cache_key(job: Job) -> dict:
    """What a cached report depends on (lists joined as the command line writes them, so keys stay stable)."""
    scorer, data = job.scorer, job.data
    return {
        "model": _fingerprint(scorer.model), "adapter": _fingerprint(scorer.adapter),
        "quantization": scorer.quantization, "dtype": scorer.dtype,
        "data": _fingerprint(data.data) if Path(data.data).is_file() else data.data,
        "columns": [data.text_column, data.label_column, _joined(data.label_names)], "split": "test",
        "split_seed": data.split_seed, "limit": job.limit, "shots": 0,
        "template": scorer.template, "label_words": _joined(scorer.label_words),
        "max_text_tokens": scorer.max_text_tokens, "truncation": first_spelling(scorer.truncation),
        **({"act": _fingerprint(job.act)} if job.act else {}),  # old cache keys stay valid
        **({"adapter_scale": scorer.adapter_scale} if scorer.adapter_scale != 1 else {}),
        **({"head": scorer.head} if scorer.head != "label_words" else {}),
        **({"length_normalize": True} if scorer.length_normalize else {}),
        **({"prior_correction": job.prior_correction} if job.prior_correction else {}),
        **({"focus_metrics": True} if job.focus_metrics else {}),
    }


def cache_path(cache_dir: Path, job: Job) -> Path:
    digest = hashlib.sha256(json.dumps(cache_key(job), sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"{digest}.json"


def evaluate_jobs(jobs: list[Job], cache_dir: Path, batch_size: int, progress: bool) -> int:
    """Fill ``job.result`` from the cache or by evaluating; returns the number evaluated."""
    from afa_llm.model.adapters import with_head
    from afa_llm.model.loading import load_model

    todo: dict[tuple, list[Job]] = {}
    for job in jobs:
        file = cache_path(cache_dir, job)
        if file.exists():
            job.result = json.loads(file.read_text())["report"]
        else:
            s = job.scorer
            todo.setdefault((s.model, s.adapter, s.adapter_scale, s.quantization, s.dtype, s.head), []).append(job)
    datasets = {id(job): data for job, data in _job_data(todo)}  # every data set checked before any model loads
    for (model_spec, _, _, quantization, dtype, _), group in todo.items():
        model, tokenizer = load_model(model_spec, quantization=quantization, dtype=dtype)
        model = with_head(model, group[0].scorer, len(datasets[id(group[0])].label_names))
        for job in group:
            job.result = evaluate_job(job, model, tokenizer, datasets[id(job)], batch_size, progress)
            write_json(str(cache_path(cache_dir, job)), {"key": cache_key(job), "report": job.result})
            print(f"{job.name} / {job.data.data}: accuracy {job.result['accuracy']:.4f} (n={job.result['n']})",
                  file=sys.stderr)
    return sum(len(group) for group in todo.values())


def evaluate_job(job: Job, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, data: ClassificationData,
                 batch_size: int, progress: bool) -> dict:
    """One entry on one data set's test split: scores (ACT, prior correction), truncation, focus metrics."""
    from afa_llm.act.calibration import act_enabled, load_act
    from afa_llm.evaluation.evaluate import evaluate_dataset
    from afa_llm.evaluation.report import truncation_record
    from afa_llm.model.adapters import build_task

    test = data.split("test")
    if job.limit:
        test = test.select(range(min(int(job.limit), len(test))))
    act = load_act(job.act) if job.act else None
    task = build_task(job.scorer, data.label_names, tokenizer)
    with act_enabled(model, act, f"entry {job.name}: act {job.act}"):
        report = evaluate_dataset(model, task, test, data.label_names, batch_size=batch_size, progress=progress)
        if job.prior_correction:
            validation = evaluate_dataset(model, task, data.split("validation"), data.label_names,
                                          batch_size=batch_size, progress=progress)
            correction = fit_from_report(validation, job.prior_correction, "the validation split")
            report = correct_report(report, correction, data.label_names)
    result = {k: report[k] for k in ("accuracy", "macro_f1", "ece", "n", "per_class", "predictions", "labels")}
    result.update(truncation_record(task, list(test["text"])))
    if job.focus_metrics:  # the plain prompt's focus (ACT is off here)
        from afa_llm.evaluation.focus_metrics import focus_metrics

        result.update(focus_metrics(model, task, list(test["text"][:FOCUS_N]), faithfulness_n=FOCUS_FAITHFULNESS_ROWS,
                                    batch_size=batch_size))
    return result


def _job_data(todo: dict[tuple, list[Job]]) -> Iterator[tuple[Job, object]]:
    """Each pending job with its data set (loaded once per data set); an ``offset`` prior correction
    on a data set without exactly two classes is refused here, not after the entry's evaluation."""
    loaded: dict[tuple, object] = {}
    for job in (job for group in todo.values() for job in group):
        d = job.data
        key = (d.data, d.text_column, d.label_column, _joined(d.label_names), d.split_seed, d.validation_data,
               d.test_data)
        if key not in loaded:
            loaded[key] = load_data(d)
        check_classes(job.prior_correction, len(loaded[key].label_names), f"entry {job.name}'s {d.data}")
        yield job, loaded[key]


def results_jobs(jobs: list[Job]) -> list[Job]:
    """--from-results: turn each run's results.json into a fine-tuned and a zero-shot job."""
    from afa_llm.runs import read_results

    out, seen, seen_zero_shot = [], set(), set()
    for job in jobs:
        if (job.name, job.run_dir) in seen:  # one job per data set; a run has one results.json
            continue
        seen.add((job.name, job.run_dir))
        if job.run_dir is None or job.scorer.adapter_scale != 1:  # results.json scored the adapter as trained
            print(f"skipping {job.name}: --from-results reads only run folders at adapter_scale 1", file=sys.stderr)
            continue
        results = read_results(job.run_dir)
        if not results or "test" not in results:
            raise UserError(f"{job.run_dir} has no results.json with a 'test' block (has the run finished?)")
        data = results.get("data", job.data.data)
        seed = results.get("seed", job.seed)
        focus = results.get("fake_focus_share") or {}
        metrics = results.get("focus_metrics") or {}
        out.append(Job(job.name, job.group, seed, job.scorer, DataSpec(data=data),
                       result={**results["test"], "focus_share": focus.get("adapter"), **metrics.get("adapter", {})}))
        zero_key = (results.get("model"), data, results.get("split_seed"), results["zero_shot"].get("n")) \
            if "zero_shot" in results else None
        if zero_key and zero_key not in seen_zero_shot:
            seen_zero_shot.add(zero_key)
            name = f"zero-shot {results.get('model', job.scorer.model)}"
            # the base scores with its LM head (a classifier's step 0 equals it; a random one has no row)
            out.append(Job(name, name, None, replace(job.scorer, head="label_words"), DataSpec(data=data),
                           result={**results["zero_shot"], "focus_share": focus.get("base"),
                                   **metrics.get("base", {})}))
    return out


# ---- aggregation and output ---------------------------------------------------------------
def aggregate(jobs: list[Job]) -> list[dict]:
    """One row per (data set, group): mean ± std over runs; sorted by data, then accuracy."""
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.data.data, job.group), []).append(job)
    rows = []
    for (data, group), members in groups.items():
        row = {"data": data, "name": group, "runs": len(members),
               "head": ",".join(sorted({m.scorer.head for m in members}))}
        for metric in ("accuracy", "macro_f1", "focus_share", "truncated_share", "ece", *FOCUS_METRICS):
            values = [m.result[metric] for m in members if m.result.get(metric) is not None]
            row[f"{metric}_mean"] = statistics.fmean(values) if values else None
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        for metric in ("truncated_share", "ece", *FOCUS_METRICS):  # shown as means
            row[metric] = row.pop(f"{metric}_mean")
            row.pop(f"{metric}_std")
        sizes = sorted({int(m.result.get("n", 0)) for m in members})
        row["examples"] = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        row["seeds"] = ",".join(str(m.seed) for m in members if m.seed is not None)
        row["focus_share"] = row.pop("focus_share_mean")
        row.pop("focus_share_std")
        row["per_class_f1"] = per_class_f1([m.result for m in members])
        rows.append(row)
    order = {data: i for i, data in enumerate(dict.fromkeys(job.data.data for job in jobs))}
    return sorted(rows, key=lambda r: (order[r["data"]], -r["accuracy_mean"]))


def per_class_f1(results: list[dict]) -> dict[str, float]:
    """Each class's F1, the mean over the results that report it (their ``per_class``)."""
    values: dict[str, list[float]] = {}
    for result in results:
        for name, scores in (result.get("per_class") or {}).items():
            values.setdefault(name, []).append(scores["f1"])
    return {name: statistics.fmean(v) for name, v in values.items()}


@dataclass
class LeaderboardRequest:
    config: str  # the leaderboard YAML
    output_dir: str | None = None  # default: the YAML's output_dir, else a folder named after the YAML
    only: list[str] | None = None  # entry names or groups to keep
    from_results: bool = False  # aggregate the runs' results.json instead of evaluating
    limit: int | None = None
    batch_size: int | None = None
    focus_metrics: bool = False
    progress: bool = True


def run_leaderboard(request: LeaderboardRequest) -> Path:
    """Evaluate (or aggregate) the YAML's entries and write leaderboard.md/.csv/.png; returns the folder."""
    r = request
    raw = select_entries(read_config(r.config), r.only, r.config)
    out = Path(r.output_dir or raw.get("output_dir") or Path(r.config).with_suffix(""))
    check_writable_dir(out, "--output-dir" if r.output_dir else "the leaderboard output folder")
    jobs = build_jobs(raw, r.config, r.limit, need_model=not r.from_results)
    for job in jobs:
        job.focus_metrics = r.focus_metrics
    if r.from_results:
        jobs = results_jobs(jobs)
        if not jobs:
            raise UserError(f"{r.config}: --from-results needs at least one 'run' entry")
    else:
        if not r.progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        done = evaluate_jobs(jobs, out / "cache", r.batch_size or int(raw.get("batch_size", 32)), r.progress)
        print(f"evaluated {done} of {len(jobs)} (entry, data set) pairs; the rest came from {out / 'cache'}",
              file=sys.stderr)
    rows = aggregate(jobs)
    out.mkdir(parents=True, exist_ok=True)
    title = Path(r.config).stem
    source = ("from each run's results.json (fake-focus share: focus on the top 1% token types / their token "
              "share)" if r.from_results else "scored by afa_llm.evaluation.evaluate.evaluate_dataset")
    write_markdown(rows, out / "leaderboard.md", title, source)
    write_csv(rows, out / "leaderboard.csv")
    write_plot(rows, out / "leaderboard.png", title)
    return out
