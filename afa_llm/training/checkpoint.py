"""Atomic, resumable checkpoints.

A checkpoint folder ``RUN/checkpoints/step-000050/`` holds:

- ``adapter/``: the masker LoRA in peft format (loads with ``PeftModel.from_pretrained``);
- ``trainer_state.pt``: step, optimisers, schedulers, the discriminator, the running
  median, and every RNG state (python, numpy, torch, the mask sampler);
- ``config.yaml``: the resolved config.

It is written to a temporary folder and renamed into place, so a crash mid-write
never leaves a folder that looks complete; only complete ones are resumed from.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_dir

if TYPE_CHECKING:
    from peft import PeftModel

    from afa_llm.config import TrainConfig

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state(generator: torch.Generator | None) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "sampler": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state.get("sampler") is not None:
        generator.set_state(state["sampler"])


def save_checkpoint(run_dir: Path, step: int, peft_model: PeftModel, state: dict, config: TrainConfig,
                    keep: int) -> Path:
    """Write ``RUN/checkpoints/step-N`` atomically and prune old ones (keep the newest)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        peft_model.save_pretrained(tmp / "adapter")
        torch.save(state, tmp / "trainer_state.pt")
        config.save(tmp / "config.yaml")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "trainer_state.pt").exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_resume(run_dir: Path, resume_from: str | None) -> Path | None:
    """``latest`` -> newest complete checkpoint of this run (None if there is none yet)."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / "trainer_state.pt").exists():
        raise UserError(f"resume_from: {resume_from} is not a checkpoint folder (no trainer_state.pt)")
    return path


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)


def load_adapter_weights(peft_model: PeftModel, adapter_dir: Path) -> None:
    """Load the adapter saved in ``adapter_dir`` (its adapter_model.safetensors) into ``peft_model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise UserError(f"checkpoint {adapter_dir} does not fit this model ({len(unexpected)} unexpected keys)")
    # Inside an autocast region (a bf16 run's final tests), torch keeps the low-precision casts of
    # trainable weights until the outermost region exits: without this, forwards after the load
    # silently keep using the old weights (the best checkpoint was tested as the last one).
    torch.clear_autocast_cache()
