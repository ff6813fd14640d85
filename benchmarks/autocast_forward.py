"""bf16 autocast vs fp32 on CPU: one no-grad forward (masked passes) and one fwd+bwd.

    .venv/bin/python benchmarks/autocast_forward.py [--threads 1] [--repeats 3]

SmolLM2-135M, random token ids: batch 32 x 64 no-grad (the shape of AFA's masked passes at
batch 8, G=4) and batch 8 x 64 forward + backward; best of --repeats each (one is enough
where bf16 is emulated: on a CPU without bf16 instructions a bf16 forward takes minutes). Prints the fp32/bf16
time ratios and how far the bf16 last-position logits are from the fp32 ones.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from afa_llm.model.loading import load_model
from afa_llm.provenance import cpu_bf16_native, cpu_name


def best_time(model, ids: torch.Tensor, autocast: bool, grad: bool, repeats: int = 3):
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    times, logits = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        with context, torch.set_grad_enabled(grad):
            logits = model(input_ids=ids, logits_to_keep=1).logits.float()
            if grad:
                logits.sum().backward()
        times.append(time.perf_counter() - start)
    return min(times), logits.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model("smollm2-135m")
    ids = torch.randint(100, 20000, (32, 64), generator=torch.Generator().manual_seed(0))
    print(f"SmolLM2-135M, torch threads={args.threads}, CPU {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 instructions: {cpu_bf16_native()})")
    for label, batch, grad in (("no-grad forward, batch 32 x 64", ids, False),
                               ("forward + backward, batch 8 x 64", ids[:8], True)):
        fp32, ref = best_time(model, batch, autocast=False, grad=grad, repeats=args.repeats)
        bf16, out = best_time(model, batch, autocast=True, grad=grad, repeats=args.repeats)
        print(f"{label}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, fp32/bf16 {fp32 / bf16:.2f}x, "
              f"max |logit diff| {(ref - out).abs().max():.3f} (logit scale {ref.abs().max():.1f})")


if __name__ == "__main__":
    main()
