"""``afa-llm calibrate``: ACT's attention-head search (`afa_llm.act.calibration`), and its controls.

Each eligible (layer, attention head) is calibrated alone and scored on N calibration examples with the
evaluator's label-word scoring: accuracy and the mean gold-label margin (gold class logit minus
the best other one). A selection rule then keeps heads (the authors' code has none; this is the
likely one, see docs/ACT.md):

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

Controls: ``--attention-heads random --draw K`` (the same number of heads per layer as the rule selects,
drawn at random with seed (--seed, K)) and ``--attention-heads all`` (every eligible head, no search).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from afa_llm.act.calibration import ACTConfig, save_act
from afa_llm.act.search_log import SEARCH_FILE, read_search, resumed_cost, run_search
from afa_llm.act.setup import CalibrationRequest, check_calibration_source, prepare
from afa_llm.errors import UserError

RULES = ("faithful", "strict")
SELECTIONS = ("search", "random", "all")  # which attention heads: --attention-heads


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


def act_file_name(heads: str, rule: str, draw: int) -> str:
    prefix = "act" if rule == "faithful" else f"act-{rule}"
    return {"search": f"{prefix}.json", "random": f"{prefix}-random-{draw}.json", "all": "act-all.json"}[heads]


def calibrate(request: CalibrationRequest) -> tuple[ACTConfig, Path]:
    """Run the attention-head search (or a control) and write act.json; returns the config and its path."""
    from afa_llm.act.workers import search_in_workers, worker_threads

    r = request
    check_calibration_source(r.resolved, r.split)
    cal = prepare(r)
    search, task, record, n_heads = cal.search, cal.task, cal.record, cal.fingerprint["heads"]
    start = time.perf_counter()
    baseline = search.baseline(cal.layers)
    info = {"eligible_layers": cal.layers, "baseline": baseline, "bf16": r.bf16, "model": r.resolved.scorer.model,
            "adapter": r.resolved.scorer.adapter,
            "prompt": {"template": task.template, "label_words": task.label_words}}
    if r.attention_heads == "all":
        heads, rule = all_heads(cal.layers, n_heads), None
    else:
        log = Path(r.output) / SEARCH_FILE
        log.parent.mkdir(parents=True, exist_ok=True)
        done = read_search(log, cal.setup)
        info.update(resumed_cost(done))  # scored by an earlier run: not in this run's seconds
        if r.workers > 1:  # the rest in parallel processes, appending to the same log
            done = search_in_workers(r, cal, done, log, progress=r.progress)
        # the logged cost of each candidate scored elsewhere; lines from before the log kept it count as
        # if scored here without the layer cache (an upper bound)
        search.forwards += sum(rec.get("forwards", search.cost_from(layer)) for (layer, _), rec in done.items())
        results = run_search(search, cal.candidates, done, baseline, log, cal.setup, progress=r.progress)
        heads, rule = select_heads(results, baseline, r.rule), r.rule
        if r.attention_heads == "random":
            heads = random_heads({l: len(h) for l, h in heads.items()}, n_heads, r.seed, r.draw)
            info["draw"] = r.draw
        info["candidates"] = len(cal.candidates)
        info["workers"] = r.workers  # the numbers depend on the threads per process (docs/PERFORMANCE.md)
        info["threads_per_process"] = worker_threads(r.workers)
    info["selected"] = search.score(heads)
    info.update(forwards_per_example=round(search.forwards, 2), seconds=round(time.perf_counter() - start, 1))
    config = ACTConfig(heads=heads, beta=r.beta, tau=r.tau, selection=r.attention_heads, rule=rule,
                       fingerprint=cal.fingerprint, calibration=record, info=info)
    path = Path(r.output) / act_file_name(r.attention_heads, r.rule, r.draw)
    save_act(path, config)
    return config, path
