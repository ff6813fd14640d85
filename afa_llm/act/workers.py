"""The ACT attention-head search in parallel processes (``afa-llm calibrate --workers N``).

On a small CPU one process with all the threads uses them poorly (the matrices of a 135M
model are small): on this project's 2-core CPU, two 1-thread processes scored the candidates
of SmolLM2 at N=200 1.18-1.34x faster than one 2-thread process (at N=64 not faster: each
worker runs its own baseline pass; docs/PERFORMANCE.md). The numbers of a search depend on the
threads per process (the sums run in another order; bf16 flips some accuracies), so act.json
records them: N workers of T threads each give what one process of T threads gives. Each
worker is a fresh (spawned) process that loads the same model and calibration rows, checks that its setup hash equals the parent's, computes its own baseline
pass and layer inputs, and scores its share of the remaining candidates, appending one line
per candidate to the shared search.jsonl (single short appends: whole lines). The parent
only shows the progress and, once all have finished, reads the log as a resumed search would.
A worker that dies loses nothing finished: ``--resume`` continues.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from afa_llm.errors import UserError

if TYPE_CHECKING:
    from afa_llm.act.setup import Calibration, CalibrationRequest

POLL_S = 2.0


def _worker(request, todo: list[tuple[int, int]], setup: str, threads: int) -> None:
    """Score ``todo`` into the log (runs in a spawned process; ``request``: the `CalibrationRequest`)."""
    torch.set_num_threads(threads)
    from afa_llm.act.search_log import SEARCH_FILE, run_search
    from afa_llm.act.setup import prepare

    cal = prepare(request)
    if cal.setup != setup:  # another model, rows or prompt than the parent's: never mix them in one log
        raise SystemExit(f"worker setup {cal.setup} differs from the search's {setup}")
    baseline = cal.search.baseline(cal.layers)
    run_search(cal.search, todo, {}, baseline, Path(request.output) / SEARCH_FILE, setup, progress=False)


def worker_threads(workers: int) -> int:
    """Torch threads per process: the parent's split evenly (at least one)."""
    return max(1, torch.get_num_threads() // workers)


def shares(todo: list, workers: int) -> list[list]:
    """Round-robin shares, so that each worker gets low and high layers alike (their costs differ)."""
    return [todo[k::workers] for k in range(workers) if todo[k::workers]]


def search_in_workers(request: CalibrationRequest, cal: Calibration, done: dict, log: Path,
                      progress: bool = True) -> dict:
    """Score the candidates not in ``done`` in ``request.workers`` processes; the finished records by candidate."""
    from tqdm.auto import tqdm

    from afa_llm.act.search_log import read_search, search_records

    todo = [c for c in cal.candidates if c not in done]
    if not todo:
        return done
    threads = worker_threads(request.workers)
    context = multiprocessing.get_context("spawn")  # a fork would inherit the parent's thread pools
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        worker_request = dataclasses.replace(request, progress=False)
        procs = [context.Process(target=_worker, args=(worker_request, share, cal.setup, threads), daemon=True)
                 for share in shares(todo, request.workers)]
        for proc in procs:
            proc.start()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    with tqdm(total=len(cal.candidates), initial=len(done), desc=f"ACT search ({len(procs)} workers)", unit="head",
              disable=not progress, file=sys.stderr) as bar:
        while any(proc.is_alive() for proc in procs):
            time.sleep(POLL_S)
            records = [r for r in search_records(log) if r.get("setup") == cal.setup]
            bar.update(len(records) - bar.n)
            if records:
                best = max(records, key=lambda r: r["accuracy"])
                bar.set_postfix_str(f"best L{best['layer']}H{best['head']} {best['accuracy']:.4f}")
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    if failed:
        raise UserError(f"{len(failed)} search worker(s) failed (exit codes {failed}); the finished candidates are in "
                        f"{log}: rerun with --resume")
    return read_search(log, cal.setup)
