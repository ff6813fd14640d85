"""The model side: loading (GGUF, quantization), the prompt task, label-word scoring, adapters."""
