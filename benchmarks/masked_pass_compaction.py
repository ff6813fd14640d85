"""AFA's masked passes: deleting the hidden tokens vs only zeroing their attention mask.

    .venv/bin/python benchmarks/masked_pass_compaction.py [--threads 1] [--batches 6] [--repeats 3]

`hide_tokens` (attention mode) deletes the hidden columns and re-pads the rows
(`task.drop_unattended`); the alternative keeps the full width with the hidden tokens'
attention-mask entries at 0. Both give the same class logits (printed: the largest
difference). SmolLM2-135M fp32, quickstart recipe: shuffled Rotten Tomatoes train batches
of 8, G=4 uniform masks at rho=0.2, so each pass scores 32 rows without gradients.
The two variants alternate; the first round is a warm-up. Prints the time ratio.
"""

from __future__ import annotations

import argparse
import time
import types

import torch

from afa_llm.attention import masking
from afa_llm.config import load_config
from afa_llm.data.loading import load_classification_data
from afa_llm.training.setup import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("recipes/quickstart.yaml", ["quantization=none", "method=afa"])  # AFA's mask keys
    data = load_classification_data(cfg.data, split_seed=cfg.split_seed)
    model, task = build_model(cfg, types.SimpleNamespace(device=torch.device("cpu")), data.label_names)
    tokenizer = task.tokenizer
    train = data.split("train").shuffle(seed=0)
    work = []
    for i in range(args.batches):
        rows = slice(cfg.batch_size * i, cfg.batch_size * (i + 1))
        batch = task.encode(train["text"][rows], train["label"][rows])
        k = masking.masks_per_example(batch.text_mask.sum(-1), cfg.method_config.mask_ratio)
        work.append((batch, masking.uniform_masks(batch.text_mask, k, cfg.method_config.num_masks, torch.Generator().manual_seed(i))))

    variants = {"attention mask only": lambda batch, pad_id: batch, "tokens deleted": masking.drop_unattended}
    seconds = dict.fromkeys(variants, 0.0)
    logits = {}
    for round_ in range(args.repeats):
        for name, compaction in variants.items():
            masking.drop_unattended = compaction
            start = time.perf_counter()
            logits[name] = [masking.masked_scores(model, b, m, task.label_token_ids, "attention",
                                                   tokenizer.pad_token_id, need_hidden=True)[0] for b, m in work]
            if round_:  # round 0 warms up
                seconds[name] += time.perf_counter() - start
    masking.drop_unattended = variants["tokens deleted"]
    widths = [(b.input_ids.shape[1], masking.hide_tokens(b, m, "attention", 0).input_ids.shape[1]) for b, m in work]
    diff = max((a - b).abs().max().item() for a, b in zip(*logits.values()))
    print(f"SmolLM2-135M fp32, {args.batches} batches of {cfg.batch_size} x G={cfg.method_config.num_masks}, "
          f"torch threads={torch.get_num_threads()}, {args.repeats - 1} timed rounds")
    print("batch width before / after deleting:", ", ".join(f"{a}/{b}" for a, b in widths))
    for name, total in seconds.items():
        print(f"{name:<20} {total / (args.repeats - 1) / args.batches:.3f} s per masked pass")
    print(f"max |class-logit difference|: {diff:.2e}")
    names = list(variants)
    print(f"speed-up from deleting: {seconds[names[0]] / seconds[names[1]]:.2f}x")


if __name__ == "__main__":
    main()
