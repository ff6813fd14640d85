"""Step cost: AFA step time / plain-LoRA step time, with a breakdown.

    .venv/bin/python benchmarks/step_cost.py [--quantization none|nf4] [--steps 10] [key=value ...]

Runs both methods in ONE process, back to back, on the same batches (SmolLM2-135M,
Rotten Tomatoes, batch 8, texts up to 96 tokens, G=4 by default), after warm-up
steps. Prints per-phase seconds (clean pass incl. focus probe, masked passes,
discriminator, backward + optimiser) and the ratio. Any config key can be overridden,
e.g. discriminator=surrogate measure_frac=0.25, or mixed_precision=bf16 (the training
steps under Accelerate's bf16 autocast, as in `afa_llm.train`).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch
from accelerate import Accelerator

from afa_llm import afa_step
from afa_llm.afa_step import TrainingObjective
from afa_llm.config import load_config
from afa_llm.data import load_sentiment_data
from afa_llm.discriminator import build_discriminator
from afa_llm.focus import clean_pass
from afa_llm.train import build_model, build_task

TIMES: dict[str, float] = defaultdict(float)


@contextmanager
def timed(name: str):
    start = time.perf_counter()
    yield
    TIMES[name] += time.perf_counter() - start


def _wrap(owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        with timed(label):
            return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def measure(cfg, model, task, texts, labels, steps: int, warmup: int, autocast) -> dict[str, float]:
    hidden = model.get_base_model().config.get_text_config().hidden_size
    disc = build_discriminator(cfg.discriminator, hidden, cfg.discriminator_hidden)
    objective = TrainingObjective(cfg, task.label_token_ids, task._tokenizer.pad_token_id, disc,
                                  torch.optim.AdamW(disc.parameters(), lr=cfg.discriminator_lr),
                                  generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    rng = np.random.default_rng(0)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            TIMES.clear()
        idx = rng.choice(len(texts), cfg.batch_size, replace=False)
        batch = task.encode([texts[i] for i in idx], [labels[i] for i in idx])
        with timed("total"):
            with timed("clean pass + focus probe"), autocast():
                clean = clean_pass(model, batch, task.label_token_ids, cfg.focus_layers)
            with timed("AFA objective (excl. masked passes, discriminator)"), autocast():
                loss, _ = objective(model, batch, clean, step + cfg.lambda_pg_warmup_steps)
            with timed("backward + optimiser"):
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    result = {k: v / steps for k, v in TIMES.items()}
    inner = result.get("masked passes", 0) + result.get("discriminator update", 0)
    key = "AFA objective (excl. masked passes, discriminator)"
    result[key] = result.get(key, 0) - inner
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", default="none", choices=["none", "nf4", "int8"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config("recipes/quickstart.yaml", [f"quantization={args.quantization}", *args.overrides])
    data = load_sentiment_data(cfg.data, split_seed=cfg.split_seed)
    train_split = data.split("train")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    model, tokenizer = build_model(cfg, accelerator)
    task = build_task(cfg, data, tokenizer)
    _wrap(afa_step, "masked_scores", "masked passes")
    _wrap(TrainingObjective, "_update_discriminator", "discriminator update")
    texts, labels = list(train_split["text"]), list(train_split["label"])
    rows = {}
    for method in ("lora", "afa", "lora"):  # lora twice: its second run checks the timing is stable
        cfg.method = method
        rows[method] = measure(cfg, model, task, texts, labels, args.steps, args.warmup, accelerator.autocast)
    phases = sorted({k for r in rows.values() for k in r} - {"total"})
    print(f"{cfg.model}, quantization={args.quantization}, batch {cfg.batch_size}, G={cfg.num_masks}, "
          f"discriminator={cfg.discriminator}, mixed_precision={cfg.mixed_precision}, {args.steps} timed steps, torch threads={torch.get_num_threads()}")
    print(f"{'phase (s/step)':<52} {'LoRA':>8} {'AFA':>8}")
    for phase in phases:
        print(f"{phase:<52} {rows['lora'].get(phase, 0):8.3f} {rows['afa'].get(phase, 0):8.3f}")
    print(f"{'total':<52} {rows['lora']['total']:8.3f} {rows['afa']['total']:8.3f}")
    print(f"AFA / LoRA step time: {rows['afa']['total'] / rows['lora']['total']:.2f}x")


if __name__ == "__main__":
    main()
