"""Label words of several tokens: afa-llm's class scores vs lm-eval-harness's ``loglikelihood``, value by value.

Setup: the `.venv-bench` of benchmarks/eval_vs_lm_eval.py (lm-eval 0.4.13 beside afa_llm). Run:

    HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/loglik_vs_lm_eval.py [--n 200] [--batch-size 16]
        [--threads 1] [--out runs/bench_loglik_vs_lm_eval]

Five label words of one to three tokens (" terrible", " very bad", " not good at all", " good",
" very good") are scored after the default prompt on the first N Rotten Tomatoes test sentences,
SmolLM2-135M-Instruct, fp32, SDPA:
- afa-llm: `afa_llm.model.scoring.class_logits` with the label-word head, ``length_normalize`` off: the
  prompt once, then one pass over its KV cache for the later tokens of every word;
- lm-eval: ``HFLM.loglikelihood`` on (context = the prompt string, continuation = the word), one request
  per (sentence, word), which runs context + continuation as one sequence per request.
Printed: the largest absolute difference of the log-likelihoods, the share of sentences whose best word
is the same, and lm-eval's context and continuation tokens against ours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = [" terrible", " very bad", " not good at all", " good", " very good"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_loglik_vs_lm_eval"))
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from afa_llm.data.loading import load_classification_data
    from afa_llm.model.loading import load_model, resolve_model_path
    from afa_llm.model.scoring import class_logits
    from afa_llm.model.task import PromptTask

    torch.set_num_threads(args.threads)
    texts = list(load_classification_data("rotten_tomatoes", split_seed=0).split("test")["text"][: args.n])
    model, tokenizer = load_model("smollm2-135m", dtype="fp32", attn_implementation="sdpa")
    model.eval()
    task = PromptTask(WORDS).bind(tokenizer)
    start = time.perf_counter()
    ours = []
    with torch.no_grad():
        for i in range(0, len(texts), args.batch_size):
            ours.append(class_logits(model, task.encode(texts[i: i + args.batch_size]), task.head))
    ours = torch.cat(ours).double()
    ours_s = time.perf_counter() - start

    lm = get_model("hf").create_from_arg_string(f"pretrained={resolve_model_path('smollm2-135m')},dtype=float32",
                                                {"batch_size": args.batch_size, "device": "cpu"})
    prefix, suffix = task.template.split("{text}")
    contexts = [prefix + text + suffix for text in texts]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, word), idx=j)
                for ctx in contexts for j, word in enumerate(WORDS)]
    start = time.perf_counter()
    theirs = torch.tensor([ll for ll, _ in lm.loglikelihood(requests)], dtype=torch.float64).view(len(texts), -1)
    theirs_s = time.perf_counter() - start

    token_rows = 0
    for row, ctx in enumerate(contexts):
        ctx_enc, cont_enc = lm._encode_pair(ctx, WORDS[1])
        token_rows += ctx_enc == task.prompt_ids(texts[row])[0] and cont_enc == task.label_token_seqs[1]
    diff = (ours - theirs).abs()
    same_best = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    summary = {"n": len(texts), "words": WORDS, "tokens_per_word": [len(t) for t in task.label_token_seqs],
               "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(), "same_best_word": same_best,
               "same_tokens_rows": token_rows, "ours_s": ours_s, "lm_eval_s": theirs_s, "threads": args.threads}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"{len(texts)} sentences x {len(WORDS)} words of {summary['tokens_per_word']} tokens")
    print(f"|ours - lm-eval| log-likelihood: max {summary['max_abs_diff']:.2e}, mean {summary['mean_abs_diff']:.2e}")
    print(f"same best word: {100 * same_best:.1f}%; lm-eval's tokens equal ours on {token_rows} / {len(texts)} rows")
    print(f"time: afa-llm {ours_s:.1f} s, lm-eval loglikelihood {theirs_s:.1f} s ({theirs_s / ours_s:.2f}x)")


if __name__ == "__main__":
    main()
