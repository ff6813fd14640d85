"""Focus extraction cost: the answer-row probe (model on SDPA) vs eager `output_attentions=True`.

    .venv/bin/python benchmarks/probe_vs_eager.py [--batch 8] [--length 96] [--repeats 5]

Each path runs in a fresh process on SmolLM2-135M (fp32, LoRA attached): forward with
focus extraction for the last third of the layers, then backward through the focus
(as AFA's policy gradient does). Prints seconds per forward+backward, peak RSS, the
ratios, and the largest difference between the two focus distributions.
"""

from __future__ import annotations

import argparse
import time

from common import peak_rss_mb, run_child


def child(path: str, batch: int, length: int, repeats: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from afa_llm.attention.focus_math import focus_distribution
    from afa_llm.attention.probe import AnswerAttentionProbe, default_focus_layers, eager_answer_attention
    from afa_llm.model.loading import load_model

    torch.manual_seed(0)
    model, _ = load_model("smollm2-135m", attn_implementation="sdpa" if path == "probe" else "eager")
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    layers = default_focus_layers(model.get_base_model().config.num_hidden_layers)
    ids = torch.randint(100, 40000, (batch, length))
    mask = torch.ones_like(ids)
    mask[::2, : length // 4] = 0  # left padding on every other row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    text = mask.bool()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        if path == "probe":
            with AnswerAttentionProbe(model, layers, mask) as probe:
                model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
                rows = probe.answer_attention()
        else:
            rows = eager_answer_attention(model, ids, mask, positions, layers, logits_to_keep=1)
        focus = focus_distribution(rows, text)
        (focus * torch.linspace(0, 1, length)).sum().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad()
    return {"path": path, "s": sum(times[1:]) / repeats, "peak_rss_mb": peak_rss_mb(),
            "focus": focus.detach()[0].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json

        print(json.dumps(child(args.child, args.batch, args.length, args.repeats)))
        return
    sizes = ("--batch", str(args.batch), "--length", str(args.length), "--repeats", str(args.repeats))
    probe, eager = run_child(__file__, "probe", *sizes), run_child(__file__, "eager", *sizes)
    diff = max(abs(a - b) for a, b in zip(probe["focus"], eager["focus"]))
    print(f"SmolLM2-135M fp32 + LoRA, batch {args.batch}, length {args.length}, forward+backward through the focus")
    print(f"{'path':<8} {'s/iter':>8} {'peak RSS MB':>12}")
    for row in (probe, eager):
        print(f"{row['path']:<8} {row['s']:8.3f} {row['peak_rss_mb']:12.0f}")
    print(f"eager / probe time: {eager['s'] / probe['s']:.2f}x; eager / probe peak RSS: "
          f"{eager['peak_rss_mb'] / probe['peak_rss_mb']:.2f}x; max |focus difference| {diff:.2e}")


if __name__ == "__main__":
    main()
