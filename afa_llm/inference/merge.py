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
else ``original``. The merge runs in fp32 and is cast to ``--dtype`` afterwards. The
result is written to a temporary folder next to ``--output`` and renamed into place, so a
half-written folder never looks complete. It loads with plain
``AutoModelForCausalLM.from_pretrained`` and with ``afa-llm eval --model DIR``.

Run folders (what ``afa-llm train`` writes) are read by `find_run`, which the leaderboard
and the focus report reuse: ``RUN/config.yaml``, ``RUN/adapter/``, ``RUN/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from afa_llm.config import PROMPT_KEYS
from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_dir, check_writable_dir

BASES = ("original", "dequantized-nf4")
MERGE_INFO = "afa_merge.json"
RUN_PROMPT_KEYS = ("data", *PROMPT_KEYS)  # what a merged folder records about its training prompt


# ---- run folders ----------------------------------------------------------------------
@dataclass
class RunInfo:
    """A training run folder, or a bare adapter folder (then ``run_dir`` is None)."""

    adapter_dir: Path
    run_dir: Path | None
    config: object | None  # afa_llm.config.TrainConfig
    results: dict | None

    @property
    def label_words(self) -> str | None:
        """The run's label words as the ``--label-words`` string (None: derived from names)."""
        words = getattr(self.config, "label_words", None)
        return ",".join(words) if words else None

    @property
    def label_names(self) -> list[str] | None:
        """The class names the run trained on: results.json's (inferred from the data), else config.yaml's."""
        names = (self.results or {}).get("label_names") or getattr(self.config, "label_names", None)
        return list(names) if names else None

    def settings(self) -> dict:
        """What the run was trained with and scoring must reuse: ``model``, the `PROMPT_KEYS`
        (``label_words`` as the ``--label-words`` string) and ``label_names``; {} for a bare adapter."""
        if self.config is None:
            return {}
        return {"model": self.config.model, **{key: getattr(self.config, key) for key in PROMPT_KEYS},
                "label_words": self.label_words, "label_names": self.label_names}


def find_run(path: str) -> RunInfo:
    """Accept a run folder (with ``adapter/``) or an adapter folder (maybe inside a run)."""
    from afa_llm.evaluation.evaluate import resolve_adapter_dir

    adapter_dir = resolve_adapter_dir(path)
    run_dir = adapter_dir.parent if adapter_dir.name == "adapter" else adapter_dir
    if not (run_dir / "config.yaml").exists() and not (run_dir / "results.json").exists():
        return RunInfo(adapter_dir, None, None, None)
    return RunInfo(adapter_dir, run_dir, read_run_config(run_dir), read_results(run_dir))


def read_run_config(run_dir: Path):
    """The run's resolved training config (a `TrainConfig`), or None if it has none."""
    from afa_llm.config import load_config

    file = run_dir / "config.yaml"
    return load_config(str(file), saved=True) if file.exists() else None


def _read_json(file: Path) -> dict | None:
    """A JSON file's content, None if there is no such file, a one-line UserError if it is broken."""
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from exc


def read_results(run_dir: Path) -> dict | None:
    return _read_json(run_dir / "results.json")


def read_merge_info(folder: str | Path) -> dict | None:
    """``afa_merge.json`` of a folder written by `afa-llm merge` (None for any other model)."""
    return _read_json(Path(folder) / MERGE_INFO)


def base_model_spec(run: RunInfo, model: str | None) -> str:
    """--model, else the run's config.yaml model, else the adapter's recorded base folder."""
    if model:
        return model
    if run.config is not None:
        return run.config.model
    recorded = json.loads((run.adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if recorded and Path(recorded, "config.json").exists():
        return recorded
    raise UserError(f"{run.adapter_dir} is not inside a run folder with config.yaml; pass --model")


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
    run: RunInfo, *, model: str | None = None, dtype: str = "fp32", base: str | None = None, act=None
) -> tuple[torch.nn.Module, object, dict]:
    """Load the base in fp32, (optionally) round-trip it through nf4, merge, cast to ``dtype``.

    ``run`` comes from `find_run`. Returns ``(merged_model, tokenizer, info)``; ``info``
    records what was merged. ``act`` (an `afa_llm.act.calibration.ACTConfig`) is refused unless it was
    calibrated for this adapter.
    """
    from afa_llm.act.calibration import check_fingerprint
    from afa_llm.evaluation.evaluate import attach_adapter
    from afa_llm.model.loading import DTYPES, load_model

    spec = base_model_spec(run, model)
    trained_quantization = getattr(run.config, "quantization", None)
    base = base or ("dequantized-nf4" if trained_quantization == "nf4" else "original")
    if base not in BASES:
        raise UserError(f"unknown --base {base!r}; use one of {', '.join(BASES)}")
    if dtype not in ("fp32", "bf16"):
        raise UserError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    full, tokenizer = load_model(spec, quantization="none", dtype="fp32")
    quantized = []
    if base == "dequantized-nf4":
        quant_dtype = DTYPES[getattr(run.config, "dtype", None) or "fp32"]
        quantized = dequantize_nf4_(full, quant_dtype)
    adapted = attach_adapter(full, str(run.adapter_dir))
    if act is not None:
        check_fingerprint(act, adapted, "--act")
    merged = adapted.merge_and_unload().to(DTYPES[dtype])
    info = {
        "base_model": spec, "adapter": str(run.adapter_dir), "run": str(run.run_dir) if run.run_dir else None,
        "merge_base": base, "trained_quantization": trained_quantization, "dtype": dtype,
        "nf4_round_tripped_modules": len(quantized),
    }
    if run.config is not None:  # the prompt the adapter was trained with (leaderboard and predict read it)
        info.update({key: getattr(run.config, key) for key in RUN_PROMPT_KEYS}, label_names=run.label_names)
    if act is not None:
        info["act"] = act.summary()
    return merged, tokenizer, info


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
        ("dtype", info["dtype"]),
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
        "A standalone causal LM: a LoRA adapter trained with afa-llm, merged into its base with",
        "`afa-llm merge`. It needs no peft. Classify with label-word scoring and the training prompt:", "",
        f"    afa-llm eval --model {output}" + (_prompt_flags(cfg) if cfg is not None else ""), "",
        "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
    ]
    blocks = [(name, res[key]) for key, name in (("test", "fine-tuned (test)"), ("zero_shot", "zero-shot base"))
              if isinstance(res.get(key), dict)]
    if blocks:
        lines += ["## Metrics (from the run's results.json: adapter on the training base)", "",
                  "| model | accuracy | macro-F1 | n |", "|---|---|---|---|"]
        lines += [f"| {name} | {b.get('accuracy', float('nan')):.4f} | {b.get('macro_f1', float('nan')):.4f} | "
                  f"{b.get('n', '')} |" for name, b in blocks]
    else:
        lines.append("No results.json was found next to the adapter, so no metrics are reported.")
    if info.get("act"):
        from afa_llm.act.calibration import model_card_lines

        lines += ["", *model_card_lines(output)]
    return "\n".join(lines) + "\n"


def _prompt_flags(cfg) -> str:
    """`afa-llm eval` options that reproduce the run's data set and prompt."""
    flags = f" --data {shlex.quote(cfg.data)} --split-seed {cfg.split_seed} --max-text-tokens {cfg.max_text_tokens}"
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


def save_merged(model, tokenizer, output: Path, card: str, info: dict, overwrite: bool = False, act=None) -> None:
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


# ---- CLI ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="a training run folder or a peft adapter folder")
    parser.add_argument("--output", required=True, help="folder to write the merged model to (must be empty)")
    parser.add_argument("--model", default=None,
                        help="base model spec (default: the run's config.yaml `model`)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="dtype of the saved weights; the merge itself runs in fp32 (default: %(default)s)")
    parser.add_argument("--base", default=None, choices=list(BASES),
                        help="merge into the original weights, or into dequant(nf4(W)), the weights a QLoRA "
                             "adapter was trained against (default: dequantized-nf4 if the run used nf4, "
                             "else original)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--act", default=None, metavar="ACT.json",
                        help="an ACT calibration of this adapter (afa-llm calibrate) to copy into the merged folder "
                             "(default: RUN/act.json if there is one)")


def run(args) -> int:
    output = Path(args.output)
    check_output(output, args.overwrite)
    check_writable_dir(output.parent, "--output's folder")  # the merge is written beside output, then renamed
    run_info = find_run(args.adapter)
    act = _act_to_copy(args.act, run_info)
    merged, tokenizer, info = merge_adapter(run_info, model=args.model, dtype=args.dtype, base=args.base, act=act)
    if act is not None:
        from afa_llm.act.calibration import merged_copy

        act = merged_copy(act, merged)  # fits the merged weights, which no longer carry an adapter
    save_merged(merged, tokenizer, output, model_card(info, run_info, str(output)), info, args.overwrite, act)
    print(f"merged {info['adapter']} into {info['base_model']} (base: {info['merge_base']}, "
          f"{info['dtype']}) -> {output}")
    return 0


def _act_to_copy(path: str | None, run: RunInfo):
    """The ACT config that --act names, else the run folder's act.json, else None."""
    from afa_llm.act.calibration import ACT_FILE, load_act

    if path is None and run.run_dir is not None and (run.run_dir / ACT_FILE).is_file():
        path = str(run.run_dir / ACT_FILE)
    return load_act(path) if path else None
