"""Step cost: each method's step time / a plain-LoRA step, with a breakdown by phase.

    .venv/bin/python benchmarks/step_cost.py [--methods lora,afa,at,vat,lora] [--steps 10] [key=value ...]

Runs the methods in ONE process, back to back, on the same batches (SmolLM2-135M,
Rotten Tomatoes, batch 8, texts up to 96 tokens by default), after warm-up steps, through
the trainer's own pieces (`afa_llm.training.setup.make_method`, the clean pass, the attention hook
for methods that edit attention). Prints per-phase seconds and each method's ratio to the
first ``lora`` row; ``lora`` listed twice checks that the timing is stable. Phases: the
clean pass (incl. the focus probe), the masked passes (AFA, word dropout), the perturbed
passes (AT/VAT/RP: started at the lowest perturbed layer), the discriminator update, the
rest of the method's loss, and backward + optimiser. Any config key can be overridden,
shared ones flat (``mixed_precision=bf16``) and a method's own under its name
(``afa.discriminator=surrogate``, ``vat.adv_eps=3``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

import numpy as np
import torch
from accelerate import Accelerator

from afa_llm.attention.hook import attention_hook
from afa_llm.config import load_config
from afa_llm.data.loading import load_classification_data
from afa_llm.attention.clean_pass import clean_pass
from afa_llm.attention import masking
from afa_llm.methods.adversarial import AdversarialAttention
from afa_llm.methods.afa import AFAMethod
from afa_llm.training.setup import build_model, make_method

TIMES: dict[str, float] = defaultdict(float)
INNER = ("masked passes", "perturbed passes", "discriminator update")
LOSS = "method loss (rest)"


@contextlib.contextmanager
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
    method = make_method(cfg, model, task, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    rng = np.random.default_rng(0)
    model.train()
    late = 10**6  # past any warm-up schedule (AFA's lambda_pg), so every term is on
    with attention_hook(model) if method.edits_attention else contextlib.nullcontext():
        for step in range(warmup + steps):
            if step == warmup:
                TIMES.clear()
            idx = rng.choice(len(texts), cfg.batch_size, replace=False)
            batch = task.encode([texts[i] for i in idx], [labels[i] for i in idx])
            with timed("total"):
                with timed("clean pass + focus probe"), autocast():
                    clean = clean_pass(model, batch, task.label_token_ids, cfg.focus_layers,
                                       **method.forward_kwargs(batch))
                with timed(LOSS), autocast():
                    loss, _ = method.loss(model, batch, clean, late)
                with timed("backward + optimiser"):
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
    result = {k: v / steps for k, v in TIMES.items()}
    result[LOSS] = result.get(LOSS, 0) - sum(result.get(k, 0) for k in INNER)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", default="none", choices=["none", "nf4", "int8"])
    parser.add_argument("--methods", default="lora,afa,at,vat,lora", type=lambda text: text.split(","),
                        help="comma-separated methods, in order (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfgs = [load_config("recipes/quickstart.yaml", [f"quantization={args.quantization}", f"method={m}",
                                                      *args.overrides]) for m in args.methods]
    cfg = cfgs[0]
    data = load_classification_data(cfg.data, split_seed=cfg.split_seed)
    train_split = data.split("train")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    model, task = build_model(cfg, accelerator, data.label_names)
    tokenizer = task.tokenizer
    _wrap(masking, "masked_scores", "masked passes")
    _wrap(AdversarialAttention, "perturbed_logits", "perturbed passes")
    _wrap(AFAMethod, "update_discriminator", "discriminator update")
    texts, labels = list(train_split["text"]), list(train_split["label"])
    rows = [measure(c, model, task, texts, labels, args.steps, args.warmup, accelerator.autocast) for c in cfgs]
    phases = sorted({k for r in rows for k in r} - {"total"})
    print(f"{cfg.model}, quantization={args.quantization}, batch {cfg.batch_size}, "
          f"mixed_precision={cfg.mixed_precision}, {args.steps} timed steps, torch threads={torch.get_num_threads()}")
    for c in cfgs:
        if c.method != "lora":
            print(f"  {c.method}: {c.method_config}")
    names = [f"{m}" for m in args.methods]
    print(f"{'phase (s/step)':<28} " + " ".join(f"{n:>8}" for n in names))
    for phase in phases + ["total"]:
        print(f"{phase:<28} " + " ".join(f"{r.get(phase, 0):8.3f}" for r in rows))
    base = rows[args.methods.index("lora")]["total"] if "lora" in args.methods else rows[0]["total"]
    for name, r in zip(names, rows):
        print(f"{name} / LoRA step time: {r['total'] / base:.2f}x")


if __name__ == "__main__":
    main()
