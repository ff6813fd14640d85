"""The cost of the focus metrics in a run's final evaluation, as a ratio to that evaluation's test pass.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/focus_metrics_cost.py --adapter RUN [--mixed-precision bf16]

On the run's own base, prompt and test split (as `afa_llm.training.validation.final_results` does):
the test evaluation (every test row) alone, the same pass with the focus of ``focus_eval_limit`` rows
read off it and their lexicon metrics (what a final evaluation runs), the lexicon metrics in a pass of
their own (as before the focus was read off the test pass), and faithfulness (``faithfulness_eval_limit``
rows, or 64 where the run has it off; 2 x 5 AOPC masks plus 2 random draws of each, as masked passes).
Prints seconds and the ratio of each to the test pass; a grid cell runs the test pass twice (best and last
checkpoint) plus its training, so its share of a cell is smaller still.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="a training run folder")
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"])
    args = parser.parse_args()

    from afa_llm.data.loading import load_data
    from afa_llm.defaults import FOCUS_FAITHFULNESS_ROWS
    from afa_llm.evaluation.evaluate import evaluate_dataset, evaluate_with_focus
    from afa_llm.evaluation.faithfulness import faithfulness
    from afa_llm.evaluation.word_focus import focus_lexicon, texts_lexicon_metrics
    from afa_llm.model.adapters import load_scorer
    from afa_llm.runs import resolve_scorer

    resolved = resolve_scorer(args.adapter, None)
    cfg = resolved.config
    data = load_data(resolved.data)
    model, task = load_scorer(resolved.scorer, data.label_names, progress=False)
    test = data.split("test")
    texts = list(test["text"][: cfg.focus_eval_limit])
    faithfulness_n = cfg.faithfulness_eval_limit or FOCUS_FAITHFULNESS_ROWS

    def test_with_focus() -> dict:
        _, rows = evaluate_with_focus(model, task, test, data.label_names, progress=False,
                                      focus_on=range(len(texts)), focus_layers=cfg.focus_layers)
        return texts_lexicon_metrics(task, texts, rows)

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.mixed_precision == "bf16"
                else contextlib.nullcontext())
    seconds = {}
    with autocast:
        for name, work in (
            ("test evaluation", lambda: evaluate_dataset(model, task, test, data.label_names, progress=False)),
            ("test + its focus", test_with_focus),
            ("lexicon own pass", lambda: focus_lexicon(model, task, texts, focus_layers=cfg.focus_layers)),
            ("faithfulness", lambda: faithfulness(model, task, texts[:faithfulness_n],
                                                  focus_layers=cfg.focus_layers)),
        ):
            start = time.perf_counter()
            work()
            seconds[name] = time.perf_counter() - start
    print(f"{cfg.model} + {args.adapter}, {len(test)} test rows, focus metrics on {len(texts)} "
          f"(faithfulness {faithfulness_n}), mixed_precision={args.mixed_precision}, "
          f"torch threads={torch.get_num_threads()}")
    for name, value in seconds.items():
        print(f"{name:<18} {value:8.1f} s  {value / seconds['test evaluation']:.2f}x the test evaluation")


if __name__ == "__main__":
    main()
