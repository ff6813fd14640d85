"""Hand-built training run folders for the merge / leaderboard / focus-report tests.

A run folder has the layout `afa-llm train` writes: ``config.yaml`` (a `TrainConfig`),
``adapter/`` (a peft LoRA adapter named "default") and ``results.json``. The base is
conftest's ``tiny_model_dir`` (or any HF folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from conftest import TINY_ROWS

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def save_random_adapter(model: torch.nn.Module, folder: Path, *, seed: int = 0, b_std: float = 0.05,
                        r: int = 4) -> Path:
    """A LoRA on q/k/v/o whose B matrices are random (so the adapter changes the model)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, b_std)
    peft_model.save_pretrained(folder)
    return folder


def make_run(run_dir: Path, base_dir: str, *, data: str = "rotten_tomatoes", seed: int = 0, method: str = "afa",
             quantization: str = "none", accuracy: float | None = None, **adapter_kwargs) -> Path:
    """A run folder: adapter + config.yaml + results.json (metrics made up when ``accuracy``)."""
    from transformers import AutoModelForCausalLM

    from afa_llm.config import TrainConfig

    run_dir.mkdir(parents=True, exist_ok=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    save_random_adapter(base, run_dir / "adapter", seed=seed, **adapter_kwargs)
    TrainConfig(output_dir=str(run_dir), model=str(base_dir), data=data, seed=seed, method=method,
                quantization=quantization, steps=10).save(run_dir / "config.yaml")
    results = {"method": method, "model": str(base_dir), "data": data, "split_seed": 0, "seed": seed,
               "steps": 10, "label_names": ["negative", "positive"]}
    if accuracy is not None:
        results["test"] = {"accuracy": accuracy, "macro_f1": accuracy - 0.01, "n": 100}
        results["zero_shot"] = {"accuracy": 0.5, "macro_f1": 0.4, "n": 100}
        results["fake_focus_share"] = {"adapter": 0.9, "base": 1.0}
        results["focus_metrics"] = {"adapter": {"lexicon_share": accuracy / 2, "lexicon_auprc": 0.3},
                                    "base": {"lexicon_share": 0.2, "lexicon_auprc": 0.25}}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def write_csv(path: Path, rows: list[tuple[str, int]] = TINY_ROWS) -> str:
    """conftest's rows (or ``rows``) as a ``text,label`` CSV, for module-scoped fixtures."""
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return str(path)
