"""ACT head search: the fast search (`afa_llm.act.head_search.HeadSearch`: each layer's input cached,
unchanged examples skipped) against the naive one (a full forward per candidate), on SmolLM2-135M /
Rotten Tomatoes.

    .venv/bin/python benchmarks/act_search.py [--n 500] [--per-layer 1] [--naive 9] [--bf16] [--threads 1]

Both searches batch by length and score only the last position, so the ratio is what the layer-
input cache and the skipping buy. A candidate's cost depends mostly on its layer (the layers >= l
run again, for the examples it changes), so by default one head per eligible layer is timed (``--per-layer 9``: every head) and the time is
scaled to all candidates; the naive search is timed on ``--naive`` candidates spread over the
layers and scaled the same way (a full forward costs the same for every candidate). Both are
said in the output. The per-candidate accuracies and margins of the candidates that both
searches ran are compared for equality. ``--bf16`` also times the fast search under bf16 autocast.
``--workers N`` also times the fast search (bf16 with ``--bf16``) split over N spawned processes
of ``threads // N`` threads each, as ``afa-llm calibrate --workers N`` runs it (each process loads
the model and runs its own baseline pass; the wall time of the slowest is what counts).
``--naive 0`` skips the naive search. ``--no-skip`` also times the fast search without skipping
the examples a candidate leaves unchanged (`afa_llm.act.head_search`), and checks that the results
are identical. A candidate's cost now also depends on how many examples its head changes, so
``--per-layer 9`` (every head) measures the whole search; one head per layer is an estimate.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch

from afa_llm.act.calibration import default_eligible_layers
from afa_llm.act.workers import shares
from afa_llm.act.head_search import HeadSearch, prepare_batches
from afa_llm.cli import build_task
from afa_llm.data.loading import load_classification_data
from afa_llm.attention.decoder_layers import find_decoder_layers
from afa_llm.reports.leaderboard import eval_defaults
from afa_llm.model.loading import load_model


def timed_search(search: HeadSearch, layers: list[int], candidates: list[tuple[int, int]],
                 n_all: int) -> tuple[float, float, dict]:
    """Seconds for the baseline pass and ``candidates``, that time scaled to ``n_all`` candidates, the results."""
    start = time.perf_counter()
    search.baseline(layers)
    baseline_s = time.perf_counter() - start
    results = {c: search.candidate(*c) for c in candidates}
    seconds = time.perf_counter() - start
    return seconds, baseline_s + (seconds - baseline_s) * n_all / len(candidates), results


def setup(n: int, batch_size: int):
    """The model, its eligible layers and heads, and the search over N validation rows."""
    model, tokenizer = load_model("smollm2-135m")
    model.eval()
    data = load_classification_data("rotten_tomatoes")
    split = data.split("validation")
    ids = sorted(np.random.default_rng(0).choice(len(split), min(n, len(split)), replace=False).tolist())
    split = split.select(ids)
    task = build_task(eval_defaults(), data.label_names, tokenizer)
    batches, labels = prepare_batches(task, list(split["text"]), list(split["label"]), batch_size, "cpu")
    n_layers, n_heads = len(find_decoder_layers(model)), model.config.num_attention_heads

    def search(fast: bool, bf16: bool = False, skip: bool = True) -> HeadSearch:
        return HeadSearch(model, batches, labels, task.label_token_ids, fast=fast, bf16=bf16, skip_unchanged=skip)

    return search, default_eligible_layers(n_layers), n_heads, len(ids)


def _worker_search(n: int, batch_size: int, bf16: bool, share: list, threads: int, out) -> None:
    torch.set_num_threads(threads)
    search, layers, _, _ = setup(n, batch_size)
    start = time.perf_counter()
    one = search(True, bf16=bf16)
    one.baseline(layers)
    baseline_s = time.perf_counter() - start
    results = {candidate: one.candidate(*candidate) for candidate in share}
    out.put((baseline_s, time.perf_counter() - start, results))


def timed_workers(args, timed: list, n_all: int) -> tuple[float, dict]:
    """Minutes for all candidates when ``timed`` is split over ``args.workers`` processes (scaled), the results."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    threads = max(1, args.threads // args.workers)
    procs = [context.Process(target=_worker_search, args=(args.n, args.batch_size, args.bf16, share, threads, out))
             for share in shares(timed, args.workers)]
    for proc in procs:
        proc.start()
    times = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    baseline_s = max(b for b, _, _ in times)
    wall = max(t for _, t, _ in times)  # per process after its model load: the search's own time
    results = {c: r for _, _, share in times for c, r in share.items()}
    return (baseline_s + (wall - baseline_s) * n_all / len(timed)) / 60, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="calibration examples (default: %(default)s)")
    parser.add_argument("--per-layer", type=int, default=1, help="heads timed per eligible layer (default: 1)")
    parser.add_argument("--naive", type=int, default=9, help="candidates timed with the naive search (default: 9)")
    parser.add_argument("--bf16", action="store_true", help="also time the fast search under bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=0, help="also time the search in N processes (default: off)")
    parser.add_argument("--no-skip", action="store_true",
                        help="also time the fast search without skipping the examples a candidate leaves unchanged")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    search, layers, n_heads, n = setup(args.n, args.batch_size)
    all_candidates = [(l, h) for l in layers for h in range(n_heads)]
    timed = [(l, h) for l in layers for h in range(min(args.per_layer, n_heads))]
    naive = [timed[i] for i in np.linspace(0, len(timed) - 1, min(args.naive, len(timed))).round().astype(int)]

    print(f"SmolLM2-135M, rotten_tomatoes validation, N={n}, batch {args.batch_size}, "
          f"threads {torch.get_num_threads()}, {len(all_candidates)} candidates (layers {layers[0]}..{layers[-1]} "
          f"x {n_heads} heads)")
    minutes = {}  # all candidates, at this N
    fast_s, fast_total, fast_results = timed_search(search(True), layers, timed, len(all_candidates))
    minutes["fast fp32"] = fast_total / 60
    print(f"fast search: {fast_s:.1f} s for the baseline + {len(timed)} candidates; "
          f"all {len(all_candidates)}: {fast_total / 60:.1f} min (candidates scaled x{len(all_candidates) / len(timed):.1f})")
    if naive:
        naive_s, naive_total, naive_results = timed_search(search(False), [], naive, len(all_candidates))
        minutes["naive fp32"] = naive_total / 60
        same = all(naive_results[c] == fast_results[c] for c in naive)
        print(f"naive search: {naive_s:.1f} s for the baseline + {len(naive)} candidates; all {len(all_candidates)}: "
              f"{naive_total / 60:.1f} min (candidates scaled x{len(all_candidates) / len(naive):.1f})")
        print(f"naive / fast: {naive_total / fast_total:.2f}x; identical results on the {len(naive)} shared "
              f"candidates: {same}")
    precision = "bf16" if args.bf16 else "fp32"
    reference = fast_results
    if args.bf16:
        _, bf16_total, reference = timed_search(search(True, bf16=True), layers, timed, len(all_candidates))
        minutes["fast bf16"] = bf16_total / 60
        print(f"fast search, bf16 autocast: {bf16_total / 60:.1f} min for all candidates")
    if args.no_skip:
        key = f"fast {precision}, no skipping"
        _, total, results = timed_search(search(True, bf16=args.bf16, skip=False), layers, timed, len(all_candidates))
        minutes[key] = total / 60
        print(f"{key}: {minutes[key]:.1f} min for all candidates; no skipping / skipping: "
              f"{minutes[key] / minutes['fast ' + precision]:.2f}x; identical results on the {len(timed)} candidates: "
              f"{all(results[c] == reference[c] for c in timed)}")
    if args.workers:
        key = f"fast {precision}, {args.workers} workers x {max(1, args.threads // args.workers)} threads"
        minutes[key], results = timed_workers(args, timed, len(all_candidates))
        print(f"{key}: {minutes[key]:.1f} min for all candidates; one process / workers: "
              f"{minutes['fast ' + precision] / minutes[key]:.2f}x; the same accuracies as one process on "
              f"{sum(results[c]['accuracy'] == reference[c]['accuracy'] for c in timed)} of {len(timed)} candidates, "
              f"the same margins on {sum(results[c]['margin'] == reference[c]['margin'] for c in timed)}")
    scale = 500 / n
    print("at N=500" + (" (scaled linearly in N)" if n != 500 else "") + ": "
          + ", ".join(f"{name} {m * scale:.1f} min" for name, m in minutes.items()))
    if "naive fp32" in minutes:
        print("naive fp32 / each: " + ", ".join(f"{name} {minutes['naive fp32'] / m:.2f}x"
                                                for name, m in minutes.items() if name != "naive fp32"))


if __name__ == "__main__":
    main()
