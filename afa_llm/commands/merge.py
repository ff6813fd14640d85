"""``afa-llm merge``: fold a trained LoRA adapter into a full-precision base for deployment
(`afa_llm.inference.merge`); the folder loads with ``AutoModelForCausalLM.from_pretrained``.
``--adapter-scale ALPHA`` folds in ALPHA times the LoRA update (WiSE-FT interpolation between the base
and the adapter); a classifier head is merged as trained, whatever ALPHA."""

from __future__ import annotations

import argparse

from afa_llm.commands import options
from afa_llm.defaults import DEFAULT_DTYPE
from afa_llm.inference.merge import BASES, MERGE_DTYPES, merge_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="a training run folder or a peft adapter folder")
    parser.add_argument("--output", required=True, help="folder to write the merged model to (must be empty)")
    parser.add_argument("--model", default=None,
                        help="base model spec (default: the run's config.yaml `model`)")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=MERGE_DTYPES,
                        help="dtype of the saved weights; the merge itself runs in fp32 (default: %(default)s)")
    parser.add_argument("--base", default=None, choices=list(BASES),
                        help="merge into the original weights, or into dequant(nf4(W)), the weights a QLoRA "
                             "adapter was trained against (default: dequantized-nf4 if the run used nf4, "
                             "else original)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--act", default=None, metavar="ACT.json",
                        help="an ACT attention calibration of this adapter (afa-llm calibrate) to copy into the "
                             "merged folder (default: RUN/act.json if there is one, and only with --adapter-scale 1: "
                             "a calibration fits one scale)")
    options.add_adapter_scale_argument(parser, merging=True)


def run(args: argparse.Namespace) -> int:
    info = merge_run(args.adapter, args.output, model=args.model, dtype=args.dtype, base=args.base, act=args.act,
                     overwrite=args.overwrite, adapter_scale=args.adapter_scale)
    scale = f", adapter scale {info['adapter_scale']}" if info["adapter_scale"] != 1 else ""
    print(f"merged {info['adapter']} into {info['base_model']} (base: {info['merge_base']}, "
          f"{info['dtype']}{scale}) -> {args.output}")
    return 0
