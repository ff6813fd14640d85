"""afa-llm: LoRA fine-tuning of decoder LLMs for classification, and methods that teach them where to look.

The library is one folder per concern (data, model, attention, methods, act, evaluation, training,
inference), typed requests (`afa_llm.specs`), run folders (`afa_llm.runs`) and one command layer on top
(`afa_llm.commands`, dispatched by `afa_llm.cli`); docs/ARCHITECTURE.md says which layer imports which.
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
