"""afa-llm: LoRA fine-tuning of decoder LLMs with Adversarial Feedback for Attention."""

import logging
import warnings

# bitsandbytes tries to fetch a fused CPU 4-bit kernel from the HF hub at import and
# warns when it cannot (always, offline). The fallback path is correct, only slower.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias whenever it wraps a
# model, so every run warned about code that is not the user's. Only that one message is hidden.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
