"""``afa-llm calibrate``: ACT's head search (`afa_llm.act.calibration`), and its controls.

Each eligible (layer, head) is calibrated alone and scored on N calibration examples with the
evaluator's label-word scoring: accuracy and the mean gold-label margin (gold class logit minus
the best other one). A selection rule then keeps heads (the authors' code has none; this is the
likely one, see ../shared/design/ACT.md):

- ``faithful``: solo accuracy > the uncalibrated baseline's;
- ``strict``: that, and a higher mean gold margin than the baseline's.

The search is exact and faster than one full forward per candidate (`afa_llm.act.head_search`): the
calibration rows are batched by length, only the last position is scored (``logits_to_keep=1``),
each layer's input is computed once (the baseline pass's hidden states, per batch) and fed to
layers >= l for every head of layer l, and above layer l only the examples that the head changed
run again (where it finds no sink, ACT leaves the layer's output bit-identical). The numbers are
those of the full forward. ``--bf16`` runs everything
under bf16 autocast (faster on AMX CPUs; other numbers, recorded in act.json).

``search.jsonl`` holds one line per scored candidate (its scores, the setup hash, its seconds and
forwards), so ``--resume`` continues where a search stopped and act.json's ``info`` reports the
whole search's cost (``resumed_seconds``: the earlier runs' share).

Controls: ``--heads random --draw K`` (the same number of heads per layer as the rule selects,
drawn at random with seed (--seed, K)) and ``--heads all`` (every eligible head, no search).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afa_llm.act.calibration import ACT_FILE, DEFAULT_BETA, DEFAULT_TAU, ACTConfig, default_eligible_layers, \
    model_fingerprint, save_act
from afa_llm.attention.decoder_layers import find_decoder_layers
from afa_llm.errors import UserError
from afa_llm.act.head_search import HeadSearch, accuracy_and_margin, prepare_batches, sub_batch_rows  # noqa: F401 (API)
from afa_llm.io_utils import atomic_write_text, check_writable_dir
from afa_llm.provenance import warn_if_emulated_bf16

SEARCH_FILE = "search.jsonl"
RULES = ("faithful", "strict")
HEADS = ("search", "random", "all")
VALIDATION_NOTE = ("the seeded validation split: disjoint from the train split by construction "
                   "(afa_llm.data.loading.stratified_splits drops duplicate texts, then splits)")


# ------------------------------------------------------------------------- pure functions
def select_heads(results: list[dict], baseline: dict, rule: str = "faithful") -> dict[int, list[int]]:
    """The heads whose solo calibration beats the baseline under ``rule`` (see the module doc)."""
    if rule not in RULES:
        raise UserError(f"unknown --rule {rule!r}; use one of {', '.join(RULES)}")
    heads: dict[int, list[int]] = {}
    for r in results:
        better = r["accuracy"] > baseline["accuracy"]
        if rule == "strict":
            better = better and r["margin"] > baseline["margin"]
        if better:
            heads.setdefault(int(r["layer"]), []).append(int(r["head"]))
    return {layer: sorted(h) for layer, h in sorted(heads.items())}


def random_heads(counts: dict[int, int], n_heads: int, seed: int, draw: int) -> dict[int, list[int]]:
    """The same number of heads per layer as ``counts``, drawn uniformly (seeded by seed and draw)."""
    rng = np.random.default_rng([seed, draw])
    return {layer: sorted(int(h) for h in rng.choice(n_heads, size=k, replace=False))
            for layer, k in sorted(counts.items()) if k}


def all_heads(layers: list[int], n_heads: int) -> dict[int, list[int]]:
    return {layer: list(range(n_heads)) for layer in layers}


def setup_hash(setup: dict) -> str:
    return hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:16]


def search_records(path: Path) -> list[dict]:
    """The whole lines of a search.jsonl (a torn line, from an interrupted or ongoing write, is skipped)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the candidate runs again
    return records


def read_search(path: Path, setup: str) -> dict[tuple[int, int], dict]:
    """The finished candidates of a search.jsonl made with the same setup; the log is rewritten without torn lines."""
    if not path.exists():
        return {}
    done = {}
    for record in search_records(path):
        if record.get("setup") != setup:
            raise UserError(f"{path} comes from another search (model, adapter, calibration examples, beta, tau or "
                            "--bf16 differ); use another --output or delete it")
        done[(record["layer"], record["head"])] = record
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done


# ---------------------------------------------------------------------------- the search
def resumed_cost(done: dict) -> dict:
    """What the candidates of an earlier run cost: their count, their logged seconds, and how many
    were logged without a cost (before the log kept it)."""
    if not done:
        return {}
    unlogged = sum("seconds" not in r for r in done.values())
    return {"resumed_candidates": len(done), "resumed_seconds": round(sum(r.get("seconds", 0.0) for r in done.values()), 1),
            **({"resumed_without_cost": unlogged} if unlogged else {})}


def run_search(search: HeadSearch, candidates: list[tuple[int, int]], done: dict, baseline: dict,
               log: Path | None, setup: str, progress: bool = True) -> list[dict]:
    """Score every candidate not in ``done``, appending each result to ``log``; all results in order."""
    from tqdm.auto import tqdm

    results = dict(done)
    best = max(done.values(), key=lambda r: r["accuracy"], default=None)
    todo = [c for c in candidates if c not in done]
    with tqdm(total=len(candidates), initial=len(candidates) - len(todo), desc="ACT search", unit="head",
              disable=not progress, file=sys.stderr) as bar:
        for layer, head in todo:
            start, forwards = time.perf_counter(), search.forwards
            result = search.candidate(layer, head)
            results[(layer, head)] = result
            if log is not None:  # with its cost, so that a resumed search reports the whole search's cost
                cost = {"seconds": round(time.perf_counter() - start, 3), "forwards": search.forwards - forwards}
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({**result, "setup": setup, **cost}) + "\n")
            if best is None or result["accuracy"] > best["accuracy"]:
                best = result
            bar.set_postfix_str(f"baseline {baseline['accuracy']:.4f}, best L{best['layer']}H{best['head']} "
                                f"{best['accuracy']:.4f}")
            bar.update(1)
    return [results[c] for c in candidates]


# -------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from afa_llm.cli import add_scorer_arguments

    add_scorer_arguments(parser)
    parser.add_argument("--split", default="validation", choices=["validation", "train"],
                        help="where the calibration examples come from; never test, and never the train split "
                             "of the run's own data (default: %(default)s)")
    parser.add_argument("--calibration-size", type=int, default=500,
                        help="calibration examples drawn from the split (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (and of --heads random)")
    parser.add_argument("--output", required=True, help=f"folder for {ACT_FILE} and {SEARCH_FILE}")
    parser.add_argument("--resume", action="store_true", help=f"continue the search in --output's {SEARCH_FILE}")
    parser.add_argument("--rule", default="faithful", choices=list(RULES),
                        help="faithful: solo accuracy above the baseline; strict: also a higher mean gold margin "
                             "(default: %(default)s)")
    parser.add_argument("--heads", default="search", choices=list(HEADS),
                        help="search; random: the rule's count per layer, random heads (control); "
                             "all: every eligible head, no search (control) (default: %(default)s)")
    parser.add_argument("--draw", type=int, default=0, help="which random draw, with --heads random")
    parser.add_argument("--layers", default=None,
                        help="comma-separated eligible layers (default: 2..L-2, as the authors)")
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA, help="sink scale (default: %(default)s)")
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU, help="sink score threshold (default: %(default)s)")
    parser.add_argument("--bf16", action="store_true", help="run the search under bf16 autocast (faster, inexact)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="score the candidates in this many processes, each with its share of the torch threads "
                             "(2 on a 2-core CPU: 1.2-1.3x faster at N=200; the numbers then are those of a "
                             "1-thread search) (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def act_file_name(heads: str, rule: str, draw: int) -> str:
    prefix = "act" if rule == "faithful" else f"act-{rule}"
    return {"search": f"{prefix}.json", "random": f"{prefix}-random-{draw}.json", "all": "act-all.json"}[heads]


def resolve_calibration(args) -> object:
    """Fill the scorer settings (model, adapter, prompt, data) in ``args``; the run's config
    (None without a run), after refusing calibration rows the run trained on."""
    from afa_llm.inference.predict import resolve_run_args

    cfg, own_data = resolve_run_args(args)
    if own_data and args.split == "train":
        raise UserError(f"the run trained on the train split of {cfg.data}; calibrate on --split validation")
    if own_data and args.split_seed != cfg.split_seed:
        raise UserError(f"the run split {cfg.data} with split seed {cfg.split_seed}; another seed's validation split "
                        f"overlaps its training examples: use --split-seed {cfg.split_seed}")
    return cfg


def calibration_rows(args, data) -> tuple[list[int], dict]:
    """The drawn example ids of the split and the record of where they came from."""
    split = data.split(args.split)
    if len(split) == 0:
        raise UserError(f"{args.data}: the {args.split} split is empty; nothing to calibrate on")
    if args.calibration_size > len(split):
        raise UserError(f"--calibration-size {args.calibration_size} is larger than the {args.split} split "
                        f"({len(split)} examples)")
    ids = sorted(np.random.default_rng(args.seed).choice(len(split), args.calibration_size, replace=False).tolist())
    record = {"data": args.data, "split": args.split, "split_seed": args.split_seed, "seed": args.seed,
              "n": len(ids), "of": len(split), "ids": ids,
              "note": VALIDATION_NOTE if args.split == "validation" else "the train split (the model never trained on it)"}
    return ids, record


def _check_args(args) -> None:
    if args.calibration_size <= 0 or args.batch_size <= 0 or args.workers <= 0:
        raise UserError("--calibration-size, --batch-size and --workers must be positive")
    if not 0 <= args.beta <= 1 or args.tau < 0:
        raise UserError("--beta must be in [0, 1] and --tau must not be negative")
    check_writable_dir(args.output, "--output")
    log = Path(args.output) / SEARCH_FILE
    if args.heads == "search" and log.exists() and log.stat().st_size and not args.resume:
        raise UserError(f"{log} exists: pass --resume to continue that search, or choose another --output")


def _eligible(args, n_layers: int) -> list[int]:
    if args.layers is None:
        layers = default_eligible_layers(n_layers)
    else:
        try:
            layers = sorted({int(v) for v in args.layers.split(",")})
        except ValueError as exc:
            raise UserError(f"--layers must be comma-separated integers, got {args.layers!r}") from exc
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


def prepare(args) -> Calibration:
    """Load the data, the drawn rows and the model of resolved ``args`` (see `resolve_calibration`)."""
    from afa_llm.cli import load_data_from_args, load_scorer

    data = load_data_from_args(args)
    ids, record = calibration_rows(args, data)
    model, task = load_scorer(args, data.label_names)
    model.eval()
    warn_if_emulated_bf16(args.bf16, next(model.parameters()).device.type)
    split = data.split(args.split).select(ids)
    batches, labels = prepare_batches(task, list(split["text"]), list(split["label"]), args.batch_size,
                                      next(model.parameters()).device)
    layers = _eligible(args, len(find_decoder_layers(model)))
    fingerprint = model_fingerprint(model)
    setup = setup_hash({"fingerprint": fingerprint, "ids": ids, "data": record, "beta": args.beta, "tau": args.tau,
                        "bf16": args.bf16, "prompt": [task.template, task.label_words, task.max_text_tokens,
                                                      task.truncation]})
    search = HeadSearch(model, batches, labels, task.label_token_ids, beta=args.beta, tau=args.tau, bf16=args.bf16)
    return Calibration(search, task, record, layers, fingerprint, setup)


def run(args) -> int:
    from afa_llm.act.workers import search_in_workers, worker_threads

    _check_args(args)
    resolve_calibration(args)
    cal = prepare(args)
    search, task, record, n_heads = cal.search, cal.task, cal.record, cal.fingerprint["heads"]
    start = time.perf_counter()
    baseline = search.baseline(cal.layers)
    info = {"eligible_layers": cal.layers, "baseline": baseline, "bf16": args.bf16, "model": args.model,
            "adapter": args.adapter, "prompt": {"template": task.template, "label_words": task.label_words}}
    if args.heads == "all":
        heads, rule = all_heads(cal.layers, n_heads), None
    else:
        log = Path(args.output) / SEARCH_FILE
        log.parent.mkdir(parents=True, exist_ok=True)
        done = read_search(log, cal.setup)
        info.update(resumed_cost(done))  # scored by an earlier run: not in this run's seconds
        if args.workers > 1:  # the rest in parallel processes, appending to the same log
            done = search_in_workers(args, cal, done, log, progress=not args.no_progress)
        # the logged cost of each candidate scored elsewhere; lines from before the log kept it count as
        # if scored here without the layer cache (an upper bound)
        search.forwards += sum(r.get("forwards", search.cost_from(layer)) for (layer, _), r in done.items())
        results = run_search(search, cal.candidates, done, baseline, log, cal.setup, progress=not args.no_progress)
        heads, rule = select_heads(results, baseline, args.rule), args.rule
        if args.heads == "random":
            heads = random_heads({l: len(h) for l, h in heads.items()}, n_heads, args.seed, args.draw)
            info["draw"] = args.draw
        info["candidates"] = len(cal.candidates)
        info["workers"] = args.workers  # the numbers depend on the threads per process (docs/PERFORMANCE.md)
        info["threads_per_process"] = worker_threads(args.workers)
    info["selected"] = search.score(heads)
    info.update(forwards_per_example=round(search.forwards, 2), seconds=round(time.perf_counter() - start, 1))
    config = ACTConfig(heads=heads, beta=args.beta, tau=args.tau, selection=args.heads, rule=rule,
                       fingerprint=cal.fingerprint, calibration=record, info=info)
    path = Path(args.output) / act_file_name(args.heads, args.rule, args.draw)
    save_act(path, config)
    print(f"{config.n_heads} heads in {len(config.edits())} layers ({args.heads}"
          f"{', rule ' + rule if rule else ''}); calibration accuracy {baseline['accuracy']:.4f} -> "
          f"{info['selected']['accuracy']:.4f} on {record['n']} {args.split} examples; wrote {path}")
    return 0
