"""Where the time of `afa-llm audit` goes, and its cost as a ratio to scoring the audited split once.

    .venv/bin/python benchmarks/audit_cost.py --adapter RUN [--mixed-precision auto|bf16|no]

On the run's own training split (as the run saw it, planted cue included; ``--split all``: every row), the phases of
`afa_llm.evaluation.audit.audit_request`, each timed: reading the rows and counting the candidates,
loading the model and the base, and the batched passes (one clean pass per sampled text and one masked
pass per (text, candidate), for the model and the base). Then one plain scoring pass over every row of
the split (what `afa-llm eval --split train` computes) on the same model. Prints the seconds of each
phase, the pass counts, and the ratios: audit / scoring the split, and audit / the 600 s budget.
"""

from __future__ import annotations

import argparse
import time

AUDIT_BUDGET_S = 600.0  # the target: the Rotten Tomatoes training split in 10 minutes on 2 CPU cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="a training run folder")
    parser.add_argument("--mixed-precision", default="auto", choices=["no", "bf16", "auto"])
    parser.add_argument("--split", default="train", choices=["train", "validation", "test", "all"],
                        help="all: every Rotten Tomatoes sentence (8,530), as the HF train split holds")
    args = parser.parse_args()

    import torch

    from afa_llm.evaluation.audit import (AuditRequest, audit_rows, audit_scorers, autocast, measure_effects,
                                          resolve_mixed_precision, sample_jobs, skewed_candidates)
    from afa_llm.evaluation.evaluate import predict_logits
    from afa_llm.runs import resolve_scorer

    times = {}
    start = time.perf_counter()
    resolved = resolve_scorer(args.adapter, None)
    request = AuditRequest(resolved, split=args.split, progress=False)  # the command's defaults
    precision = resolve_mixed_precision(args.mixed_precision)
    texts, labels, names, _ = audit_rows(request)
    candidates, skews, found = skewed_candidates(texts, labels, len(names), request.min_count,
                                                 request.max_candidates)
    jobs = sample_jobs(candidates, request.sample, request.seed)
    times["rows and candidates"] = time.perf_counter() - start
    start = time.perf_counter()
    scorers, task = audit_scorers(resolved, names, progress=False)
    times["loading the models"] = time.perf_counter() - start
    start = time.perf_counter()
    with autocast(precision):
        measure_effects(scorers, task, texts, jobs, candidates, [s["class"] for s in skews], request.batch_size)
    times["clean and masked passes"] = time.perf_counter() - start
    audit = sum(times.values())
    start = time.perf_counter()
    with autocast(precision):
        predict_logits(scorers[0].model, task, texts, batch_size=32, progress=False)
    scoring = time.perf_counter() - start

    rows = len({r for r, _ in jobs})
    print(f"{args.adapter}: {len(texts)} texts, {found} candidates (min count {request.min_count}), "
          f"{len(candidates)} measured, {request.sample} texts each; mixed precision {precision}, "
          f"{torch.get_num_threads()} threads")
    print(f"passes: {rows * len(scorers)} clean + {len(jobs) * len(scorers)} masked ({len(scorers)} models); "
          "at most max_candidates x sample texts, whatever the split's size")
    for phase, seconds in times.items():
        print(f"  {phase:<26} {seconds:8.1f} s  ({seconds / audit:5.1%})")
    print(f"audit {audit:.1f} s; scoring the split once {scoring:.1f} s")
    print(f"ratio audit / scoring the split: {audit / scoring:.2f}x")
    print(f"ratio audit / {AUDIT_BUDGET_S:.0f} s budget: {audit / AUDIT_BUDGET_S:.2f}")


if __name__ == "__main__":
    main()
