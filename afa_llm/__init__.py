"""afa-llm: LoRA fine-tuning of decoder LLMs for classification, and methods that teach them where to look.

The library is one folder per concern (data, model, attention, methods, act, evaluation, training,
inference), typed requests (`afa_llm.specs`), run folders (`afa_llm.runs`) and one command layer on top
(`afa_llm.commands`, dispatched by `afa_llm.cli`); docs/ARCHITECTURE.md says which layer imports which.

The Python API (`afa_llm.api`): ``afa_llm.train(recipe, **keys) -> Run``, ``afa_llm.load(path) -> Classifier``,
then ``predict``, ``predict_proba`` and ``evaluate``. Its names load on first use, so ``import afa_llm``
stays light (no torch).
"""

import logging
import warnings

# bitsandbytes tries to fetch a fused CPU 4-bit kernel from the HF hub at import and
# warns when it cannot (always, offline). The fallback path is correct, only slower.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias whenever it wraps a
# model, so every run warned about code that is not the user's. Only that one message is hidden.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__version__ = "0.1.0"

__all__ = ["Classifier", "Run", "load", "train"]


def __getattr__(name: str):
    """The API's names, imported on first use (torch and transformers load then, not at ``import afa_llm``)."""
    if name in __all__:
        from afa_llm import api

        return getattr(api, name)
    raise AttributeError(f"module 'afa_llm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
