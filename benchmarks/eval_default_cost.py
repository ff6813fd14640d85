"""What `afa-llm eval`'s default diagnostics cost next to scoring alone, as a ratio (target: <= 1.2x at any size).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_default_cost.py --n 200 2000 --repeats 3

For each N: ``afa-llm eval --model smollm2-135m --split train --limit N`` (the real SmolLM2-135M, fp32,
Rotten Tomatoes' seeded train split, which has more than 2,000 rows) run in this process, from the command
line's parsing to its report (data, model loading, scoring, the report; not the interpreter's start),
once with the defaults (the lexicon focus metrics on ``--focus-n`` rows; faithfulness is opt-in) and once
with ``--focus-n 0 --faithfulness-n 0`` (scoring alone). The two alternate, ``--repeats`` times, after one
untimed warm-up run; the script prints the median seconds of each, their ratio, and whether both scored
every row alike (the focus is read off the scoring pass, so the predictions and probabilities must be equal).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODES = {"scoring alone": ["--focus-n", "0", "--faithfulness-n", "0"], "default eval": []}


def timed_eval(model: str, data: str, n: int, extra: list[str], output: Path) -> float:
    """Seconds of one in-process ``afa-llm eval`` of the first ``n`` train rows (its printed report discarded)."""
    from afa_llm.cli import main

    argv = ["eval", "--model", model, "--data", data, "--split", "train", "--limit", str(n), "--no-progress",
            "--output", str(output), *extra]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"afa-llm {' '.join(argv)} exited with {code}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 2000], help="rows scored (default: 200 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode per N (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--model", default="smollm2-135m", help="(default: %(default)s)")
    parser.add_argument("--data", default="rotten_tomatoes", help="(default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {mode: Path(tmp) / f"{i}.json" for i, mode in enumerate(MODES)}
        timed_eval(args.model, args.data, 8, [], outputs["default eval"])  # warm-up: imports, tokenizer, VADER
        print(f"{args.model} fp32, {args.data} train split, torch threads={torch.get_num_threads()}, "
              f"median of {args.repeats}")
        for n in args.n:
            seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
            for repeat in range(args.repeats):
                order = list(MODES) if repeat % 2 == 0 else list(reversed(MODES))  # cancels a drift in speed
                for mode in order:
                    seconds[mode].append(timed_eval(args.model, args.data, n, MODES[mode], outputs[mode]))
            reports = {mode: json.loads(path.read_text()) for mode, path in outputs.items()}
            same = all(reports["default eval"][key] == reports["scoring alone"][key]
                       for key in ("predictions", "probabilities"))
            focus = reports["default eval"].get("focus_metrics", {})
            median = {mode: statistics.median(values) for mode, values in seconds.items()}
            print(f"n={n}: scoring alone {median['scoring alone']:.1f} s, default eval {median['default eval']:.1f} s "
                  f"(lexicon metrics on {focus.get('lexicon_n', 0)} texts with a rated word), "
                  f"ratio {median['default eval'] / median['scoring alone']:.3f}x; "
                  f"same predictions and probabilities: {'yes' if same else 'NO'}; "
                  f"runs: {', '.join(f'{m} ' + ' '.join(f'{s:.1f}' for s in v) for m, v in seconds.items())}")


if __name__ == "__main__":
    main()
