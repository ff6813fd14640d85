"""Serving speed: `afa-llm predict` on a merged classifier vs transformers' `pipeline("text-classification")`.

Setup, from the repo root after `make setup` (.venv; nothing else to install), a merged classifier:

    .venv/bin/afa-llm train recipes/quickstart.yaml head=classifier method=lora output_dir=runs/clf
    .venv/bin/afa-llm merge --adapter runs/clf --output runs/clf-merged

Run:

    .venv/bin/python benchmarks/predict_vs_pipeline.py --merged runs/clf-merged [--n 1000] [--batch-size 32]
        [--threads 1] [--repeats 3] [--unsorted] [--bf16] [--out runs/bench_predict_vs_pipeline]

Both tools score the same folder (an ``AutoModelForSequenceClassification`` written by `afa-llm merge`), the
same rows (the first N of the data set's test split, its split seed, from ``afa_merge.json``), in fp32, with
the same batch size and thread count, each in a fresh process of its own, REPEATS times, interleaved
(ours, theirs, theirs, ours, ...); the median counts. What is timed is the whole job a user runs, from
just after ``import torch`` (the imports of transformers, pandas and afa-llm count):
- ours: ``afa-llm predict --model MERGED --data rows.csv --output preds.csv`` (load, read, score, write);
- the pipeline: load with ``pipeline(...)``, read the same CSV with pandas, apply the training prompt
  (``template.format(text=...)``; the folder was trained on prompted texts), classify with ``batch_size``,
  write the labels.
It prints the throughput ratio, each tool's peak RSS, and the share of identical predicted labels.

The same computation, arranged differently: `afa-llm predict` sorts the texts by length before batching
(each batch pads to its own longest row: less padding), runs under ``torch.no_grad``, and builds the
prompt's token ids directly; the pipeline batches rows in file order. ``--unsorted`` adds a third
child, ours without the length sort, to show how much of the ratio the sort alone gives; ``--bf16`` adds
two children in bf16, ours with ``--dtype bf16`` and the pipeline with ``dtype=torch.bfloat16``: the
like-for-like ratio in bf16, and how many bf16 labels still equal the fp32 pipeline's (other arithmetic).

It also prints the token ceiling: the tokens the pipeline computes (each file-order batch padded to its
longest row) over the real tokens of the rows. A tool that computes every real token of every row at the
same cost per token cannot be faster than that ratio (less the fixed cost of load and imports); more
needs less work per row (another dtype, a shared-prefix cache), not better batching.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import peak_rss_mb, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def child_ours(merged: str, rows: str, out: str, batch_size: int, threads: int, unsorted: bool,
               dtype: str = "fp32") -> dict:
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()  # both children time their imports beyond torch: a user's job pays them
    from afa_llm import cli
    from afa_llm.evaluation import evaluate

    if unsorted:  # the ablation: batches in file order, as the pipeline has them
        import numpy as np

        evaluate.length_batches = lambda task, texts, size: [np.arange(len(texts))[s: s + size]
                                                             for s in range(0, len(texts), size)]
    Path(out).unlink(missing_ok=True)
    code = cli.main(["predict", "--model", merged, "--data", rows, "--output", out, "--dtype", dtype,
                     "--batch-size", str(batch_size), "--no-progress"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"afa-llm predict exited with {code}")
    import pandas as pd

    return {"seconds": seconds, "labels": pd.read_csv(out)["predicted_label"].astype(str).tolist(),
            "peak_rss_mb": peak_rss_mb()}


def child_pipeline(merged: str, rows: str, out: str, batch_size: int, threads: int, dtype: str = "fp32") -> dict:
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    import pandas as pd
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    template = json.loads((Path(merged) / "afa_merge.json").read_text())["template"]
    classify = pipeline("text-classification", model=merged, device="cpu", dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    texts = pd.read_csv(rows)["text"].astype(str).tolist()
    labels = [r["label"] for r in classify([template.format(text=t) for t in texts], batch_size=batch_size)]
    pd.DataFrame({"text": texts, "predicted_label": labels}).to_csv(out, index=False)
    return {"seconds": time.perf_counter() - start, "labels": labels, "peak_rss_mb": peak_rss_mb()}


def padded_tokens(lengths: list[int], batch_size: int, sort: bool) -> int:
    """Tokens computed when rows of these lengths run in batches of ``batch_size``, each padded to its longest."""
    ordered = sorted(lengths) if sort else list(lengths)
    return sum(len(b) * max(b) for b in (ordered[s: s + batch_size] for s in range(0, len(ordered), batch_size)))


def prompt_lengths(merged: str, rows: Path) -> list[int]:
    """Token count of each row's prompt as the pipeline tokenizes it (the template applied)."""
    import pandas as pd
    from transformers import AutoTokenizer

    template = json.loads((Path(merged) / "afa_merge.json").read_text())["template"]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    texts = pd.read_csv(rows)["text"].astype(str).tolist()
    return [len(ids) for ids in tokenizer([template.format(text=t) for t in texts])["input_ids"]]


def write_rows(merged: str, n: int, path: Path) -> int:
    from afa_llm.data.loading import load_classification_data

    info = json.loads((Path(merged) / "afa_merge.json").read_text())
    data = load_classification_data(info.get("data") or "rotten_tomatoes", split_seed=0)
    test = data.split("test")
    test = test.select(range(min(n, len(test))))
    path.parent.mkdir(parents=True, exist_ok=True)
    test.select_columns(["text"]).to_csv(str(path), index=False)
    return len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merged", help="a folder written by `afa-llm merge` from a head=classifier run")
    parser.add_argument("--n", type=int, default=1000, help="first N test rows (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="both tools (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both tools (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool (default: %(default)s)")
    parser.add_argument("--unsorted", action="store_true", help="add ours without the length sort")
    parser.add_argument("--bf16", action="store_true",
                        help="add ours and the pipeline in bf16 (faster where the CPU has bf16 units; other arithmetic)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_predict_vs_pipeline"))
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        kind, merged, rows, out, batch, threads = args.child
        dtype = "bf16" if kind.endswith("bf16") else "fp32"
        result = (child_pipeline(merged, rows, out, int(batch), int(threads), dtype) if kind.startswith("pipeline")
                  else child_ours(merged, rows, out, int(batch), int(threads), kind == "unsorted", dtype))
        print(json.dumps(result))
        return
    if not args.merged or not (Path(args.merged) / "afa_merge.json").is_file():
        raise SystemExit("--merged must be a folder written by `afa-llm merge` (see the setup above)")
    out = Path(args.out)
    rows = out / "rows.csv"
    n = write_rows(args.merged, args.n, rows)
    lengths = prompt_lengths(args.merged, rows)
    tokens = {"real": sum(lengths), "file_order": padded_tokens(lengths, args.batch_size, sort=False),
              "sorted": padded_tokens(lengths, args.batch_size, sort=True)}
    kinds = ["ours", "pipeline"] + (["unsorted"] if args.unsorted else []) + (["bf16", "pipeline_bf16"] if args.bf16 else [])
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            results[kind].append(run_child(__file__, kind, args.merged, str(rows), str(out / f"{kind}.csv"),
                                           str(args.batch_size), str(args.threads)))
            print(f"{kind} run {r + 1}: {results[kind][-1]['seconds']:.2f} s", file=sys.stderr)
    seconds = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    def agree(kind: str) -> int:
        return sum(a == b for a, b in zip(results[kind][0]["labels"], results["pipeline"][0]["labels"]))

    same = agree("ours")
    summary = {"n": n, "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
               "median_seconds": seconds, "rows_per_second": {k: n / s for k, s in seconds.items()},
               "throughput_ratio": seconds["pipeline"] / seconds["ours"],
               "peak_rss_mb": {k: max(x["peak_rss_mb"] for x in v) for k, v in results.items()},
               "identical_predictions": same / n, "tokens": tokens,
               "token_ceiling": tokens["file_order"] / tokens["real"],
               **({"bf16_throughput_ratio": seconds["pipeline_bf16"] / seconds["bf16"],
                   "bf16_identical_predictions": agree("bf16") / n,
                   "bf16_pipeline_identical_predictions": agree("pipeline_bf16") / n} if args.bf16 else {})}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"{n} rows, batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}:")
    for k in kinds:
        print(f"  {k:13s} {seconds[k]:7.2f} s  {n / seconds[k]:7.1f} rows/s  peak RSS "
              f"{summary['peak_rss_mb'][k]:.0f} MB")
    print(f"throughput: afa-llm predict / pipeline = {summary['throughput_ratio']:.2f}x")
    if args.unsorted:
        print(f"  of which the length sort: ours / ours unsorted = {seconds['unsorted'] / seconds['ours']:.2f}x")
    print(f"token ceiling: the pipeline computes {tokens['file_order']} tokens (file-order batches, padded), "
          f"sorted batches {tokens['sorted']}, the rows hold {tokens['real']}: at the same cost per token no tool "
          f"is more than {summary['token_ceiling']:.2f}x the pipeline")
    print(f"identical predicted labels: {same} / {n} ({100 * same / n:.1f}%)")
    if args.bf16:
        print(f"in bf16: afa-llm predict / pipeline = {summary['bf16_throughput_ratio']:.2f}x; ours in bf16 is "
              f"{seconds['pipeline'] / seconds['bf16']:.2f}x the fp32 pipeline")
        print(f"labels identical to the fp32 pipeline's: ours bf16 {agree('bf16')} / {n}, "
              f"pipeline bf16 {agree('pipeline_bf16')} / {n}")


if __name__ == "__main__":
    main()
