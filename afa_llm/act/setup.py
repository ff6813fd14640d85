"""What an ACT attention-head search needs (`afa_llm.act.search.calibrate` and each of its worker processes): the
request, the drawn calibration rows (never rows the run trained on), the model and its `HeadSearch`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afa_llm.act.calibration import DEFAULT_BETA, DEFAULT_TAU, default_eligible_layers, model_fingerprint
from afa_llm.act.head_search import HeadSearch, prepare_batches
from afa_llm.act.search_log import setup_hash
from afa_llm.attention.decoder_layers import find_decoder_layers
from afa_llm.data.loading import ClassificationData, load_data
from afa_llm.deprecations import first_spelling
from afa_llm.errors import UserError
from afa_llm.provenance import warn_if_emulated_bf16
from afa_llm.specs import Resolved

VALIDATION_NOTE = ("the seeded validation split: disjoint from the train split by construction "
                   "(afa_llm.data.loading.stratified_splits drops duplicate texts, then splits)")


@dataclass
class CalibrationRequest:
    """An ACT attention-head search (`calibrate`): the scorer and data, the calibration rows, the settings."""

    resolved: Resolved
    output: str  # folder for act.json and search.jsonl
    split: str = "validation"
    calibration_size: int = 500
    seed: int = 0
    resume: bool = False
    rule: str = "faithful"
    attention_heads: str = "search"  # search | random | all (ACTConfig.selection)
    draw: int = 0
    layers: list[int] | None = None  # eligible layers (None: 2..L-2)
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    bf16: bool = False
    batch_size: int = 32
    workers: int = 1
    progress: bool = True


def check_calibration_source(resolved: Resolved, split: str) -> None:
    """Refuse calibration rows that the run trained on."""
    cfg, data = resolved.config, resolved.data
    if resolved.own_data and split == "train":
        raise UserError(f"the run trained on the train split of {cfg.data}; calibrate on --split validation")
    if resolved.own_data and data.split_seed != cfg.split_seed:
        raise UserError(f"the run split {cfg.data} with split seed {cfg.split_seed}; another seed's validation split "
                        f"overlaps its training examples: use --split-seed {cfg.split_seed}")


def calibration_rows(request: CalibrationRequest, data: ClassificationData) -> tuple[list[int], dict]:
    """The drawn example ids of the split and the record of where they came from."""
    r, spec = request, request.resolved.data
    split = data.split(r.split)
    if len(split) == 0:
        raise UserError(f"{spec.data}: the {r.split} split is empty; nothing to calibrate on")
    if r.calibration_size > len(split):
        raise UserError(f"--calibration-size {r.calibration_size} is larger than the {r.split} split "
                        f"({len(split)} examples)")
    ids = sorted(np.random.default_rng(r.seed).choice(len(split), r.calibration_size, replace=False).tolist())
    record = {"data": spec.data, "split": r.split, "split_seed": spec.split_seed, "seed": r.seed,
              "n": len(ids), "of": len(split), "ids": ids,
              "note": VALIDATION_NOTE if r.split == "validation" else "the train split (the model never trained on it)"}
    return ids, record


def _eligible(layers: list[int] | None, n_layers: int) -> list[int]:
    layers = default_eligible_layers(n_layers) if layers is None else sorted(set(layers))
    if not layers or not all(0 <= l < n_layers for l in layers):
        raise UserError(f"no eligible layers ({layers}) in a model with {n_layers} layers; set --layers")
    return layers


@dataclass
class Calibration:
    """What the search (and each of its worker processes) needs: the scorer on the drawn rows."""

    search: HeadSearch
    task: object
    record: dict  # where the calibration rows came from
    layers: list[int]  # eligible
    fingerprint: dict
    setup: str  # hash of everything a search.jsonl line depends on

    @property
    def candidates(self) -> list[tuple[int, int]]:
        return [(layer, head) for layer in self.layers for head in range(self.fingerprint["heads"])]


def prepare(request: CalibrationRequest) -> Calibration:
    """Load the data, the drawn rows and the model of ``request``."""
    from afa_llm.model.adapters import load_scorer

    r = request
    data = load_data(r.resolved.data)
    ids, record = calibration_rows(r, data)
    model, task = load_scorer(r.resolved.scorer, data.label_names, progress=r.progress)
    if task.head.reads_cache:
        raise UserError("ACT's search scores the answer position alone: it needs one-token label words "
                        "(or a run with head=classifier)")
    model.eval()
    warn_if_emulated_bf16(r.bf16, next(model.parameters()).device.type, fix="drop --bf16")
    split = data.split(r.split).select(ids)
    batches, labels = prepare_batches(task, list(split["text"]), list(split["label"]), r.batch_size,
                                      next(model.parameters()).device)
    layers = _eligible(r.layers, len(find_decoder_layers(model)))
    fingerprint = model_fingerprint(model)
    setup = setup_hash({"fingerprint": fingerprint, "ids": ids, "data": record, "beta": r.beta, "tau": r.tau,
                        "bf16": r.bf16, "prompt": [task.template, task.label_words, task.max_text_tokens,
                                                   first_spelling(task.truncation)] +  # logs stay resumable
                                                  ([task.head_kind] if task.head_kind != "label_words" else [])})
    search = HeadSearch(model, batches, labels, task.head, beta=r.beta, tau=r.tau, bf16=r.bf16)
    return Calibration(search, task, record, layers, fingerprint, setup)
