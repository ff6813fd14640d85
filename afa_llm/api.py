"""The Python API: train a run, load a classifier, predict and evaluate, on the command line's code paths.

    import afa_llm

    run = afa_llm.train("recipes/quickstart.yaml", data="reviews.csv", steps=200, output_dir="runs/reviews")
    clf = run.classifier()                      # or afa_llm.load("runs/reviews")
    clf.predict(["a gorgeous, witty film"])     # one class name per text
    clf.evaluate(split="test")["accuracy"]      # the report of `afa-llm eval`

`train` takes the keys of a recipe (`afa_llm.config.load_config`, validated as `afa-llm train` validates
them); `load` resolves a run, adapter, merged folder or model as `afa-llm predict` does
(`afa_llm.runs.resolve_scorer`, `afa_llm.model.adapters.load_scorer`); `Classifier.predict` is
`afa-llm predict`'s scoring (`afa_llm.inference.predict.predict_texts`) and `Classifier.evaluate` is
`afa-llm eval`'s report (`afa_llm.evaluation.request.evaluate_request`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from afa_llm.errors import UserError
from afa_llm.specs import DATA_KEYS, SCORER_KEYS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from afa_llm.config import TrainConfig
    from afa_llm.model.task import PromptTask
    from afa_llm.specs import Resolved

# what `load` takes besides the path and adapter_scale: how the base loads and how it is prompted (the run's,
# unless given)
SCORER_OPTIONS = tuple(key for key in SCORER_KEYS if key not in ("model", "adapter", "adapter_scale"))
EVAL_SPLITS = ("train", "validation", "test", "all")


@dataclass
class Run:
    """A training run folder: its resolved config (config.yaml) and its results (results.json)."""

    path: Path
    config: TrainConfig
    results: dict | None

    @classmethod
    def from_folder(cls, path: str | Path) -> Run:
        """The run that ``afa-llm train`` (or `train`) wrote to ``path``."""
        from afa_llm.runs import read_results, read_run_config

        folder = Path(path)
        config = read_run_config(folder)
        if config is None:
            raise UserError(f"{path} is not a training run folder (it holds no config.yaml)")
        return cls(folder, config, read_results(folder))

    def classifier(self, adapter_scale: float = 1.0, **scorer_options: Any) -> Classifier:
        """`load` this run's adapter with its base model, prompt and class names."""
        return load(self.path, adapter_scale, **scorer_options)


def train(recipe: str | Path | None = None, **keys: Any) -> Run:
    """Train one run, like ``afa-llm train RECIPE key=value ...``; returns the finished `Run`.

    ``keys`` are recipe keys as Python values (``steps=200``, ``lora_target_modules=["q_proj"]``); a
    method's own keys go flat, under its name (``afa={"num_masks": 8}``) or dotted
    (``**{"afa.num_masks": 8}``). They override the recipe's and are validated as the CLI's are:
    a bad key or value is a `UserError` naming it."""
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train as train_config

    cfg = load_config(str(recipe) if recipe is not None else None, values=keys)
    results = train_config(cfg)
    return Run(Path(cfg.output_dir), cfg, results)


def load(path: str | Path, adapter_scale: float = 1.0, *, model: str | None = None,
         **scorer_options: Any) -> Classifier:
    """A `Classifier` from ``path``: a training run folder, a peft adapter folder (give the base as
    ``model`` if it is in no run), a folder written by ``afa-llm merge``, a built-in model name
    (``smollm2-135m``) or a local HF folder (zero-shot, with the ``afa-llm eval`` defaults).

    ``adapter_scale`` scales the adapter's LoRA update (WiSE-FT weight interpolation, ``--adapter-scale`` of
    the CLI; 0: the base model, 1: the adapter as trained; a classifier head is kept as trained:
    `afa_llm.model.adapters.scale_adapter`). ``scorer_options`` override the run's: quantization, dtype,
    template, label_words (a list or a comma-separated string), max_text_tokens, truncation, head,
    length_normalize."""
    from afa_llm.model.adapters import load_scorer

    source = _source(str(path), model)
    given = {**_scorer_options(scorer_options), "adapter_scale": adapter_scale}
    resolved = _resolve(source, given)
    scorer, task = load_scorer(resolved.scorer, resolved.class_names)
    return Classifier(resolved, scorer, task, source, given)


class Classifier:
    """A loaded model (+ adapter) with its prompt: predicts class names and probabilities, and evaluates.

    ``classes`` orders the columns of `predict_proba`; ``config`` is the run's `TrainConfig` (None for
    a merged folder or a plain model)."""

    def __init__(self, resolved: Resolved, model: torch.nn.Module, task: PromptTask,
                 source: tuple[str | None, str | None], given: dict[str, Any]):
        self.resolved, self.model, self.task = resolved, model, task
        self._source, self._given = source, given
        self.classes: list[str] = list(resolved.class_names)

    @property
    def config(self) -> TrainConfig | None:
        return self.resolved.config

    @property
    def adapter_scale(self) -> float:
        return self.resolved.scorer.adapter_scale

    def __repr__(self) -> str:
        adapter, model = self._source
        scale = f", adapter_scale={self.adapter_scale}" if self.adapter_scale != 1 else ""
        return f"Classifier({adapter or model!r}, classes={self.classes}{scale})"

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Class probabilities, one row per text, one column per class of ``classes`` (the softmax of the
        class logits). An empty text is not scored: its row is NaN."""
        return self._score(texts, batch_size, progress)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> list[str]:
        """The predicted class name of each text (as ``afa-llm predict`` writes it; "" for an empty text)."""
        return self._score(texts, batch_size, progress)[1]

    def _score(self, texts: Sequence[str], batch_size: int, progress: bool) -> tuple[np.ndarray, list[str]]:
        from afa_llm.inference.predict import predict_texts

        if isinstance(texts, str):
            raise UserError("texts must be a list of texts, not one string: pass [text]")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise UserError(f"batch_size must be a positive number of texts, got {batch_size!r}")
        return predict_texts(self.model, self.task, self.classes, list(texts), batch_size=batch_size,
                             progress=progress)

    def evaluate(self, data: str | None = None, split: str = "test", *, limit: int | None = None,
                 batch_size: int = 32, focus_n: int | None = None, faithfulness_n: int | None = None,
                 progress: bool = False, **data_options: Any) -> dict:
        """The report of ``afa-llm eval`` (accuracy, macro_f1, per-class scores, ece, brier, the predictions
        and probabilities, the focus metrics) on ``split`` of ``data`` (default: the run's data set and
        split seed). ``data_options``: text_column, label_column, label_names, split_seed, validation_data,
        test_data. ``focus_n`` / ``faithfulness_n``: rows for the focus metrics (default: the CLI's)."""
        from afa_llm.evaluation.request import EvalRequest, evaluate_request

        unknown = sorted(set(data_options) - set(DATA_KEYS))
        if unknown:
            raise UserError(f"unknown evaluate option {unknown[0]!r}; data options: "
                            f"{', '.join(key for key in DATA_KEYS if key != 'data')}")
        if split not in EVAL_SPLITS:
            raise UserError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
        for name, value in (("limit", limit), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise UserError(f"{name} must be a positive number of rows, got {value!r}")
        resolved = _resolve(self._source, {**self._given, **data_options, "data": data})
        rows = {key: value for key, value in (("focus_n", focus_n), ("faithfulness_n", faithfulness_n))
                if value is not None}
        report, _ = evaluate_request(EvalRequest(resolved, split=split, limit=limit, batch_size=batch_size,
                                                 progress=progress, loaded=self.model, **rows))
        return report


def _source(path: str, model: str | None) -> tuple[str | None, str | None]:
    """(adapter, model) for ``path``: a run or adapter folder is the adapter, anything else the model."""
    from afa_llm.model.adapters import resolve_adapter_dir

    try:
        resolve_adapter_dir(path)
    except UserError:
        if model is not None:
            raise UserError(f"model= names the base of an adapter, and {path} holds none "
                            "(a run folder or a peft adapter folder)") from None
        return None, path
    return path, model


def _scorer_options(options: dict[str, Any]) -> dict[str, Any]:
    """``load``'s options as `resolve_scorer` takes them (label words comma-separated)."""
    unknown = sorted(set(options) - set(SCORER_OPTIONS))
    if unknown:
        raise UserError(f"unknown load option {unknown[0]!r}; options: model, {', '.join(SCORER_OPTIONS)}")
    words = options.get("label_words")
    if isinstance(words, (list, tuple)):
        options = {**options, "label_words": ",".join(words)}
    return options


def _resolve(source: tuple[str | None, str | None], given: dict[str, Any]) -> Resolved:
    from afa_llm.runs import resolve_scorer

    adapter, model = source
    return resolve_scorer(adapter, model, given, require_source=True)
