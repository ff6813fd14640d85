"""``afa-llm merge``: fold a trained LoRA adapter into a full-precision base for deployment.

The base is always loaded in full precision (fp32); merging into a 4-bit base would
re-quantise it (lossy, docs/STACK_NOTES.md). Two bases are offered:

- ``original``: the model's own weights W;
- ``dequantized-nf4``: dequant(nf4(W)) for every Linear layer that the QLoRA training
  quantised (transformers' bitsandbytes rule: every ``nn.Linear`` except lm_head, tied /
  output embeddings and keep-in-fp32 modules; the nf4 settings of
  `afa_llm.model.loading.quantization_config`). These are the weights the adapter was trained
  against, so the merged model reproduces "4-bit base + adapter".

The default is ``dequantized-nf4`` when the run's ``config.yaml`` says ``quantization: nf4``,
else ``original``. The merge runs in fp32 and is cast to ``--dtype`` afterwards. The result is
written to a temporary folder next to ``--output`` and renamed into place, so a half-written
folder never looks complete. It loads with plain ``AutoModelForCausalLM.from_pretrained`` and
with ``afa-llm eval --model DIR``.

``adapter_scale`` (``--adapter-scale``, WiSE-FT weight interpolation) folds in that fraction of the
LoRA update, so the merged folder scores as the adapter loaded at that scale. A classifier head
(``score``) is a trained layer, not a LoRA update: it is merged as trained whatever the scale.
``afa_merge.json`` and the model card record the scale.

Run folders are read by `afa_llm.runs.find_run`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from afa_llm.defaults import DEFAULT_DTYPE
from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_dir
from afa_llm.runs import MERGE_INFO, RUN_PROMPT_KEYS, RunInfo, base_model_spec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from afa_llm.act.calibration import ACTConfig

BASES = ("original", "dequantized-nf4")
MERGE_DTYPES = ("fp32", "bf16")  # of the saved weights; the merge itself runs in fp32


# ---- the nf4 round trip -----------------------------------------------------------------
def nf4_quantized_modules(model: torch.nn.Module) -> list[str]:
    """Names of the Linear layers that loading with bitsandbytes nf4 quantises."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(model, None, getattr(model, "_keep_in_fp32_modules", None))
    return [
        name for name, module in model.named_modules()
        if (type(module) is nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skip)
    ]


@torch.no_grad()
def dequantize_nf4_(model: torch.nn.Module, quant_dtype: torch.dtype) -> list[str]:
    """Replace each quantised Linear weight W by dequant(nf4(W)) in place; returns the names.

    ``quant_dtype`` is the dtype the training loaded the weights in before quantising
    (config.yaml ``dtype``): bitsandbytes' absmax statistics depend on it. Quantisation goes
    through ``bnb.nn.Params4bit(...).to(device)``, the path transformers uses when loading.
    """
    import bitsandbytes as bnb
    from transformers.pytorch_utils import Conv1D

    from afa_llm.model.loading import quantization_config

    qcfg = quantization_config("nf4", quant_dtype)
    names = nf4_quantized_modules(model)
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight
        transpose = isinstance(modules[name], Conv1D)  # Conv1D stores W transposed
        source = (weight.data.T if transpose else weight.data).to(quant_dtype).contiguous()
        packed = bnb.nn.Params4bit(
            source.cpu(), requires_grad=False, compress_statistics=qcfg.bnb_4bit_use_double_quant,
            quant_type=qcfg.bnb_4bit_quant_type, quant_storage=qcfg.bnb_4bit_quant_storage,
        ).to(source.device)
        restored = bnb.functional.dequantize_4bit(packed.data, packed.quant_state)
        weight.data.copy_((restored.T if transpose else restored).to(weight.dtype))
    return names


# ---- merging ------------------------------------------------------------------------
def merge_adapter(
    run: RunInfo, *, model: str | None = None, dtype: str = DEFAULT_DTYPE, base: str | None = None,
    act: ACTConfig | None = None, adapter_scale: float = 1.0
) -> tuple[torch.nn.Module, object, dict]:
    """Load the base in fp32, (optionally) round-trip it through nf4, merge ``adapter_scale`` times the LoRA
    update (the classifier head as trained), cast to ``dtype``.

    ``run`` comes from `find_run`. Returns ``(merged_model, tokenizer, info)``; ``info``
    records what was merged. ``act`` (an `afa_llm.act.calibration.ACTConfig`) is refused unless it was
    calibrated for this adapter at this scale.
    """
    from afa_llm.act.calibration import check_fingerprint
    from afa_llm.model.adapters import adapter_classes, check_adapter_scale, with_head
    from afa_llm.model.loading import DTYPES, load_model
    from afa_llm.specs import ScorerSpec

    spec = base_model_spec(run, model)
    trained_quantization = getattr(run.config, "quantization", None)
    base = base or ("dequantized-nf4" if trained_quantization == "nf4" else "original")
    if base not in BASES:
        raise UserError(f"unknown --base {base!r}; use one of {', '.join(BASES)}")
    if dtype not in MERGE_DTYPES:
        raise UserError(f"--dtype must be {' or '.join(MERGE_DTYPES)}, got {dtype!r}")
    check_adapter_scale(adapter_scale, str(run.adapter_dir))
    full, tokenizer = load_model(spec, quantization="none", dtype="fp32")
    quantized = []
    if base == "dequantized-nf4":
        quant_dtype = DTYPES[getattr(run.config, "dtype", None) or DEFAULT_DTYPE]
        quantized = dequantize_nf4_(full, quant_dtype)
    classes = adapter_classes(run.adapter_dir)
    head = "label_words" if classes is None else "classifier"
    adapted = with_head(full, ScorerSpec(model=spec, adapter=str(run.adapter_dir), adapter_scale=adapter_scale,
                                         head=head), classes or 0)
    if act is not None:
        check_fingerprint(act, adapted, "--act")
    merged = adapted.merge_and_unload().to(DTYPES[dtype])
    if classes is not None:
        label_classifier(merged, tokenizer, run.label_names, classes, str(run.adapter_dir))
    info = {
        "base_model": spec, "adapter": str(run.adapter_dir), "run": str(run.run_dir) if run.run_dir else None,
        "merge_base": base, "trained_quantization": trained_quantization, "dtype": dtype,
        "nf4_round_tripped_modules": len(quantized), "adapter_scale": adapter_scale,
    }
    if run.config is not None:  # the prompt the adapter was trained with (leaderboard and predict read it)
        info.update({key: getattr(run.config, key) for key in RUN_PROMPT_KEYS}, label_names=run.label_names)
    info["head"] = head  # what the adapter holds, also for a bare adapter
    if act is not None:
        info["act"] = act.summary()
    return merged, tokenizer, info


def label_classifier(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, names: list[str] | None, classes: int,
                     source: str) -> None:
    """Name the merged classifier's classes (``id2label``/``label2id``) and give it a pad token, so that
    ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")`` batch it."""
    if not names or len(names) != classes:
        raise UserError(f"{source}: the class names of this classifier are unknown (merge it from its run folder, "
                        "whose results.json names them)")
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


def model_card(info: dict, run: RunInfo, output: str) -> str:
    """README.md for the merged folder: base, merge base, data, method, prompt, metrics."""
    cfg, res = run.config, run.results or {}
    base_note = {
        "dequantized-nf4": "dequant(nf4(W)): the weights the QLoRA adapter was trained against",
        "original": "the original full-precision weights W",
    }[info["merge_base"]]
    rows = [
        ("base model", f"`{info['base_model']}`"),
        ("merge base", f"{info['merge_base']} ({base_note})"),
        ("adapter", f"`{info['adapter']}`"),
        ("adapter scale", _scale_note(info.get("adapter_scale", 1.0))),
        ("dtype", info["dtype"]),
        ("head", info.get("head", "label_words")),
    ]
    if cfg is not None:
        rows += [
            ("training method", cfg.method), ("trained on", f"{cfg.data} (split seed {cfg.split_seed})"),
            ("training base quantization", cfg.quantization), ("steps / seed", f"{cfg.steps} / {cfg.seed}"),
            ("prompt template", f"`{cfg.template!r}`"),
            ("label words", ", ".join(repr(w) for w in cfg.label_words) if cfg.label_words else "' ' + class name"),
        ]
    lines = [
        "---", f"base_model: {json.dumps(info['base_model'])}", "library_name: transformers",
        "tags: [afa-llm, lora, merged, text-classification]", "---", "", f"# {Path(output).name}", "",
        *_usage(info, output, cfg),
        "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
    ]
    blocks = [(name, res[key]) for key, name in (("test", "fine-tuned (test)"), ("zero_shot", "zero-shot base"))
              if isinstance(res.get(key), dict)]
    if blocks:
        scale = info.get("adapter_scale", 1.0)
        lines += ["## Metrics (from the run's results.json: adapter on the training base"
                  + (f", at scale 1, not this folder's {scale}" if scale != 1 else "") + ")", "",
                  "| model | accuracy | macro-F1 | n |", "|---|---|---|---|"]
        lines += [f"| {name} | {b.get('accuracy', float('nan')):.4f} | {b.get('macro_f1', float('nan')):.4f} | "
                  f"{b.get('n', '')} |" for name, b in blocks]
    else:
        lines.append("No results.json was found next to the adapter, so no metrics are reported.")
    if info.get("act"):
        from afa_llm.act.calibration import model_card_lines

        lines += ["", *model_card_lines(output)]
    return "\n".join(lines) + "\n"


def _scale_note(scale: float) -> str:
    if scale == 1:
        return "1 (the LoRA update as trained)"
    return f"{scale} (WiSE-FT: {scale} x the LoRA update; a classifier head, if any, as trained)"


def _usage(info: dict, output: str, cfg) -> list[str]:
    """How to use the merged folder: label-word scoring with afa-llm, or a standard classifier."""
    if info.get("head") != "classifier":
        return ["A standalone causal LM: a LoRA adapter trained with afa-llm, merged into its base with",
                "`afa-llm merge`. It needs no peft. Classify with label-word scoring and the training prompt:", "",
                f"    afa-llm eval --model {output}" + (_prompt_flags(cfg) if cfg is not None else ""), ""]
    template = cfg.template if cfg is not None else "{text}"
    return ["A standalone sequence classifier (`AutoModelForSequenceClassification`, `id2label` set): a LoRA",
            "adapter and its classification head trained with afa-llm, merged with `afa-llm merge`. It needs no",
            "peft. It was trained on texts in the prompt below, so give it texts in that prompt:", "",
            "    from transformers import pipeline",
            f"    classify = pipeline('text-classification', model={output!r})",
            f"    classify([{template!r}.format(text=t) for t in texts])", "",
            f"or `afa-llm predict --model {output} --data FILE.csv` (which applies the prompt itself).", ""]


def _prompt_flags(cfg) -> str:
    """`afa-llm eval` options that reproduce the run's data set and prompt."""
    flags = f" --data {shlex.quote(cfg.data)} --split-seed {cfg.split_seed} --max-text-tokens {cfg.max_text_tokens}"
    for split in ("validation", "test"):  # a split of the run's own, given as a file
        if getattr(cfg, f"{split}_data"):
            flags += f" --{split}-data {shlex.quote(getattr(cfg, f'{split}_data'))}"
    flags += f" --truncation {cfg.truncation}"
    flags += " --template " + shlex.quote(cfg.template.replace("\n", "\\n"))
    if cfg.label_words:
        flags += " --label-words " + shlex.quote(",".join(cfg.label_words))
    return flags


# ---- writing ------------------------------------------------------------------------
def check_output(output: Path, overwrite: bool) -> None:
    """Refuse a non-empty output (unless overwrite) before any model is loaded."""
    if output.is_file() and not overwrite:
        raise UserError(f"--output {output} is a file; pass --overwrite to replace it")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UserError(f"--output {output} exists and is not empty; pass --overwrite to replace it")


def save_merged(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output: Path, card: str, info: dict,
                overwrite: bool = False, act: ACTConfig | None = None) -> None:
    """Save into a temp folder beside ``output``, then rename it into place (with ``act``'s act.json)."""
    check_output(output, overwrite)
    try:
        with atomic_dir(output) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "README.md").write_text(card)
            (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2))
            if act is not None:
                from afa_llm.act.calibration import ACT_FILE, save_act

                save_act(tmp / ACT_FILE, act)
    except OSError as exc:
        raise UserError(f"cannot write the merged model to {output}: {exc.strerror or exc}") from exc


def act_to_copy(path: str | None, run: RunInfo, adapter_scale: float = 1.0) -> ACTConfig | None:
    """The ACT config that --act names, else the run folder's act.json (calibrated at scale 1, so only at
    ``adapter_scale`` 1), else None."""
    from afa_llm.act.calibration import ACT_FILE, load_act

    if path is None and run.run_dir is not None and (run.run_dir / ACT_FILE).is_file():
        if adapter_scale != 1:
            print(f"note: {run.run_dir / ACT_FILE} is not copied: it was calibrated for the adapter at scale 1, "
                  f"not {adapter_scale} (calibrate with --adapter-scale and pass --act)", file=sys.stderr)
            return None
        path = str(run.run_dir / ACT_FILE)
    return load_act(path) if path else None


def merge_run(adapter: str, output: str, *, model: str | None = None, dtype: str = DEFAULT_DTYPE,
              base: str | None = None, act: str | None = None, overwrite: bool = False,
              adapter_scale: float = 1.0) -> dict:
    """Merge the run (or adapter) at ``adapter`` and write the folder ``output``; returns what was merged.
    The output is checked before any model loads."""
    from afa_llm.act.calibration import merged_copy
    from afa_llm.io_utils import check_writable_dir
    from afa_llm.runs import find_run

    target = Path(output)
    check_output(target, overwrite)
    check_writable_dir(target.parent, "--output's folder")  # the merge is written beside output, then renamed
    run_info = find_run(adapter)
    act_config = act_to_copy(act, run_info, adapter_scale)
    merged, tokenizer, info = merge_adapter(run_info, model=model, dtype=dtype, base=base, act=act_config,
                                            adapter_scale=adapter_scale)
    if act_config is not None:
        act_config = merged_copy(act_config, merged)  # fits the merged weights, which no longer carry an adapter
    save_merged(merged, tokenizer, target, model_card(info, run_info, output), info, overwrite, act_config)
    return info
