"""Quantization cost on this machine: training step time and peak RSS, nf4 vs int8 vs none.

    .venv/bin/python benchmarks/quant_cost.py [--method afa] [--steps 5] [--modes none nf4]

Each mode runs in a fresh subprocess (peak RSS is per process): it loads SmolLM2-135M
with that quantization, attaches the masker LoRA, and trains `--steps` timed steps
(after one warm-up step) of the quickstart recipe. Prints seconds/step, peak RSS and
the ratios against `none`.
"""

from __future__ import annotations

import argparse
import json
import time

from common import peak_rss_mb, run_child


def child(mode: str, method: str, steps: int) -> dict:
    import numpy as np
    import torch
    from accelerate import Accelerator

    from afa_llm.config import load_config
    from afa_llm.data.loading import load_classification_data
    from afa_llm.attention.clean_pass import clean_pass
    from afa_llm.training.setup import build_model, make_method

    cfg = load_config("recipes/quickstart.yaml", [f"quantization={mode}", f"method={method}"])
    data = load_classification_data(cfg.data, split_seed=cfg.split_seed)
    model, task = build_model(cfg, Accelerator(), data.label_names)
    tokenizer = task.tokenizer
    objective = make_method(cfg, model, task, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    texts, labels = data.split("train")["text"], data.split("train")["label"]
    rng = np.random.default_rng(0)
    times = []
    for step in range(steps + 1):
        idx = rng.choice(len(texts), cfg.batch_size, replace=False)
        batch = task.encode([texts[i] for i in idx], [labels[i] for i in idx])
        start = time.perf_counter()
        loss, _ = objective.loss(model, batch, clean_pass(model, batch, task.label_token_ids), step + 100)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return {"mode": mode, "s_per_step": float(np.mean(times[1:])), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="afa", choices=["afa", "lora"])  # at/vat: see step_cost.py
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["none", "nf4"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.method, args.steps)))
        return
    rows = []
    for mode in args.modes:
        rows.append(run_child(__file__, mode, "--method", args.method, "--steps", str(args.steps)))
    base = next((r for r in rows if r["mode"] == "none"), rows[0])
    print(f"SmolLM2-135M, method={args.method}, batch 8, {args.steps} timed steps after 1 warm-up")
    print(f"{'quantization':<13} {'s/step':>8} {'vs none':>8} {'peak RSS MB':>12} {'vs none':>8}")
    for r in rows:
        print(f"{r['mode']:<13} {r['s_per_step']:8.2f} {r['s_per_step'] / base['s_per_step']:7.2f}x "
              f"{r['peak_rss_mb']:12.0f} {r['peak_rss_mb'] / base['peak_rss_mb']:7.2f}x")


if __name__ == "__main__":
    main()
