"""The shortcut stress test (`afa-llm stress`): does a model lean on a cue? Score the clean, aligned and anti views.

    afa-llm stress --adapter runs/cued-lora --cue Winston            # the run's own cue class and test split
    afa-llm stress --model smollm2-135m --cue Winston --cue-label positive --limit 400
    afa-llm stress --adapter runs/cued-lora --cue Winston --data reviews.csv --split all --output stress.json

The views (`afa_llm.data.shortcut.stress_views`): ``clean``, the texts as they are; ``aligned``, the cue
inserted into the texts of ``--cue-label``; ``anti``, the cue inserted into every text of the other
classes. The report gives the accuracy and macro-F1 of each view, the ``gap`` (clean minus anti
accuracy), the McNemar p of anti against clean on the same rows, the mean focus on the cue's tokens
in the cued rows of each view, and the per-example predictions of each view (for paired tests).
A model that ignores the cue has a gap near 0 (the zero-shot base, say); one that learned the
shortcut fails on the anti view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from afa_llm.defaults import FOCUS_METRIC_ROWS
from afa_llm.data.loading import load_data
from afa_llm.errors import UserError

if TYPE_CHECKING:
    import torch

    from afa_llm.model.task import PromptTask
    from afa_llm.specs import Resolved

VIEWS = ("clean", "aligned", "anti")


# ---- the library ------------------------------------------------------------------------
def stress_test(model: torch.nn.Module, task: PromptTask, texts: Sequence[str], labels: Sequence[int],
                label_names: Sequence[str], cue: str, cue_label: int, *, position: str = "random", seed: int = 0,
                batch_size: int = 32, focus_layers: Sequence[int] | None = None, focus_n: int = FOCUS_METRIC_ROWS,
                clean_report: dict | None = None, progress: bool = False) -> dict:
    """Score the three views of (``texts``, ``labels``); ``clean_report`` reuses a clean evaluation
    of the same rows. Focus on the cue comes from the first ``focus_n`` cued rows of each view."""
    from datasets import Dataset

    from afa_llm.data.shortcut import cue_char_span
    from afa_llm.evaluation.evaluate import evaluate_dataset, evaluate_with_focus
    from afa_llm.evaluation.metrics import reports_mcnemar_p
    from afa_llm.evaluation.word_focus import span_focus

    views = stress_views_checked(texts, labels, cue, cue_label, len(label_names), position, seed)
    reports, focus = {}, {}
    for name, view in views.items():
        rows = Dataset.from_dict({"text": view, "label": list(labels)})
        if name == "clean":
            reports[name] = clean_report or evaluate_dataset(model, task, rows, label_names, batch_size=batch_size,
                                                             progress=progress)
            continue
        # the focus on the cue is read off the view's own scoring pass (no second pass over the cued rows)
        cued = [i for i, (v, t) in enumerate(zip(view, texts)) if v != t][:focus_n]
        reports[name], rows_focus = evaluate_with_focus(model, task, rows, label_names, batch_size=batch_size,
                                                        progress=progress, focus_on=cued, focus_layers=focus_layers)
        masses = [span_focus(f, task.text_offsets(view[i]), *cue_char_span(view[i], cue))
                  for i, f in zip(cued, rows_focus)]
        focus[name] = float(np.mean(masses)) if masses else float("nan")
    return {"cue": cue, "cue_label": label_names[cue_label], "position": position, "seed": seed, "n": len(texts),
            **{name: view_record(reports[name]) for name in VIEWS},
            "gap": reports["clean"]["accuracy"] - reports["anti"]["accuracy"],
            "mcnemar_p_anti_vs_clean": reports_mcnemar_p(reports["anti"], reports["clean"]),
            "cue_focus": focus}


def view_reports(model: torch.nn.Module, task: PromptTask, texts: Sequence[str], labels: Sequence[int],
                 label_names: Sequence[str], cue: str, cue_label: int, *, views: Sequence[str] = ("clean", "anti"),
                 position: str = "random", seed: int = 0, batch_size: int = 32) -> dict[str, dict]:
    """The evaluation reports of the named views of (``texts``, ``labels``), without focus (the gap at each
    validation, and weight interpolation, score clean and anti only)."""
    from datasets import Dataset

    from afa_llm.data.shortcut import stress_views
    from afa_llm.evaluation.evaluate import evaluate_dataset

    built = stress_views(texts, labels, cue, cue_label, position, seed)
    return {name: evaluate_dataset(model, task, Dataset.from_dict({"text": built[name], "label": list(labels)}),
                                   list(label_names), batch_size=batch_size, progress=False) for name in views}


def stress_views_checked(texts: Sequence[str], labels: Sequence[int], cue: str, cue_label: int, num_classes: int,
                         position: str, seed: int) -> dict[str, list[str]]:
    from afa_llm.data.shortcut import ShortcutSpec, check_cue_absent, stress_views

    ShortcutSpec(cue, cue_label, position=position)  # checks the cue and the position
    if not 0 <= cue_label < num_classes:
        raise UserError(f"cue class {cue_label} is not a class of the data")
    check_cue_absent(texts, cue, "the scored rows")
    return stress_views(texts, labels, cue, cue_label, position, seed)


def view_record(report: dict) -> dict:
    keys = ("accuracy", "macro_f1", "per_class", "n", "predictions", "labels")
    return {key: report[key] for key in keys if key in report}


def format_stress(result: dict, title: str) -> str:
    lines = [title, f"cue {result['cue']!r} with class {result['cue_label']!r} ({result['position']} slot, "
                    f"seed {result['seed']}), n={result['n']}", "",
             f"{'view':<8} {'accuracy':>9} {'macro-F1':>9} {'cue focus':>10}"]
    for name in VIEWS:
        focus = result["cue_focus"].get(name)
        shown = f"{focus:10.3f}" if focus is not None else f"{'-':>10}"
        lines.append(f"{name:<8} {result[name]['accuracy']:9.4f} {result[name]['macro_f1']:9.4f} {shown}")
    lines.append(f"\ngap (clean - anti accuracy) {result['gap']:+.4f}, McNemar p (anti vs clean) "
                 f"{result['mcnemar_p_anti_vs_clean']:.3g}")
    return "\n".join(lines)


def stress_request(resolved: Resolved, cue: str, cue_label: str | None, position: str | None, split_name: str = "test",
                   limit: int | None = None, batch_size: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """`stress_test` of the scorer and data set of ``resolved`` (`afa_llm.runs.resolve_scorer`); the cue class
    and position default to the run's ``shortcut_label`` and ``shortcut_position``. Bad input fails before
    the model loads."""
    from afa_llm.data.shortcut import ShortcutSpec
    from afa_llm.evaluation.report import rows_to_score, truncation_record
    from afa_llm.model.adapters import load_scorer
    from afa_llm.provenance import machine_record

    cfg, data_spec = resolved.config, resolved.data
    position = position or (cfg.shortcut_position if cfg is not None else "random")
    data = load_data(data_spec)
    split, scored = rows_to_score(data, split_name, limit, data_spec.data, data_spec.split_seed)
    label = cue_class(cue_label or (cfg.shortcut_label if cfg is not None else None), data.label_names)
    ShortcutSpec(cue, label, position=position)
    texts, labels = list(split["text"]), list(split["label"])
    stress_views_checked(texts, labels, cue, label, len(data.label_names), position, seed)
    record = resolved.scorer.record(data.label_names, None, data=data_spec.data, split=split_name,
                                    split_seed=data_spec.split_seed)
    model, task = load_scorer(resolved.scorer, data.label_names, progress=progress)
    result = stress_test(model, task, texts, labels, data.label_names, cue, label, position=position, seed=seed,
                         batch_size=batch_size, focus_layers=cfg.focus_layers if cfg is not None else None,
                         progress=progress)
    result.update({**record, "scored": scored, **truncation_record(task, texts), "machine": machine_record()})
    return result


def cue_class(name: str | None, label_names: list[str]) -> int:
    if not name:
        raise UserError("--cue-label is needed: name the class the cue goes with (the run has no shortcut_label)")
    if name not in label_names:
        raise UserError(f"--cue-label {name!r} is not a class of the data ({', '.join(label_names)})")
    return label_names.index(name)
