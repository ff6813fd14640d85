"""Training cost of ``guard`` and ``debias: poe``: seconds per step, refreshes included, over a plain-LoRA step.

    .venv/bin/python benchmarks/guard_cost.py [--steps 50] [key=value ...]

Trains SmolLM2-135M on Rotten Tomatoes with the main shortcut setting ('Winston' in half of the positive training
sentences) in bf16 mixed precision, batch 8, once per variant, back to back in one process, through the trainer
itself (`afa_llm.training.trainer.train`), with no validation. A variant's cost is the sum of its steps'
``step_time`` (the guard's hidden-copy pass and loss included) plus its guard refreshes (``guard_refresh_s``: the
audit's measure on the candidates every ``guard_every`` steps), both from its metrics.jsonl; the first
``--warmup`` steps are left out. Variants: lora, guard=base at the default threshold, guard=base with
``guard_threshold=-1e9`` (every candidate flagged: the largest hidden-copy cost), guard=random, debias=poe, and
lora again (the spread of the timing). Any config key can be overridden (``guard_every=50``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

VARIANTS = {
    "lora": [],
    "guard base": ["guard=base"],
    "guard base, all flagged": ["guard=base", "guard_threshold=-1e9"],
    "guard random": ["guard=random"],
    "poe": ["debias=poe"],
    "lora (again)": [],
}
COMMON = ["method=lora", "mixed_precision=bf16", "eval_every=0", "select_best=false", "save_every=0",
          "test_limit=16", "focus_eval_limit=1", "faithfulness_eval_limit=0", "shortcut_cue=Winston",
          "shortcut_label=positive", "shortcut_rate=0.5", "shortcut_purity=1.0", "progress=false"]


def variant_cost(run: Path, warmup: int) -> tuple[float, float, int]:
    """(step seconds, refresh seconds, steps counted) of a finished run."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step_time" in r and r["step"] > warmup]
    refresh = sum(r.get("guard_refresh_s", 0.0) for r in records)
    return sum(r["step_time"] for r in steps), refresh, len(steps)


def main() -> None:
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(VARIANTS.items()):
            run = Path(tmp) / f"run{i}"
            train(load_config("recipes/quickstart.yaml", [*COMMON, f"steps={args.steps}", f"output_dir={run}",
                                                          *extra, *args.overrides]))
            rows.append((name, *variant_cost(run, args.warmup)))
    base = rows[0][1] / rows[0][3]
    print(f"\n{'variant':<26} {'s/step':>7} {'refresh s':>9} {'s/step, all':>11} {'x lora':>7}")
    for name, step_s, refresh_s, n in rows:
        per_step = step_s / n + refresh_s / args.steps  # refreshes spread over every step
        print(f"{name:<26} {step_s / n:7.3f} {refresh_s:9.1f} {per_step:11.3f} {per_step / base:7.2f}")
    print(f"\n{args.steps} steps per variant ({args.warmup} warm-up steps left out; refreshes all counted)")


if __name__ == "__main__":
    main()
