"""Shared fixtures for the afa-llm tests.

Environment (set here, before anything imports transformers):
    HF_HUB_OFFLINE=1 and TOKENIZERS_PARALLELISM=false. The hub is unreachable; every
    model and data set comes from the packaged GGUF / CSV files or from tmp dirs.

Fixtures
    smollm2_path (session) -> str
        ``afa_llm.model.loading.resolve_model_path("smollm2-135m")``: the HF folder converted
        from the packaged GGUF. The first call ever takes ~15-30 s; it is cached in
        $AFA_LLM_CACHE (default ~/.cache/afa_llm) and then takes ~0.1 s.
    smollm2_tokenizer (session) -> tokenizer
        ``afa_llm.model.loading.load_tokenizer(smollm2_path)`` (left padding, pad = eos).
        ' negative' / ' positive' / ' neutral' are single tokens. Do not mutate.
    tiny_model_dir (session) -> str
        A tiny random LlamaForCausalLM (hidden 64, 2 layers, 4 heads, 2 kv heads,
        intermediate 128, vocab = the SmolLM2 tokenizer's, torch.manual_seed(0)) saved
        with save_pretrained together with the SmolLM2 tokenizer. Load it with
        ``afa_llm.model.loading.load_model(tiny_model_dir)`` (or pass it as ``--model``).
        Loading takes well under a second.
    tiny_model (session) -> (model, tokenizer)
        ``load_model(tiny_model_dir)`` in fp32, eval mode. Shared: do not train it or
        change its weights; load your own copy for that.
    learnable_csv (session) -> str
        a CSV of 128 distinct texts whose label is one word, 'good' (1) or 'bad' (0): a tiny
        model learns it in ~30 steps (training tests).
    make_csv (function) -> callable
        ``make_csv(rows=None, name="data.csv", header=("text", "label")) -> str``
        writes a CSV under tmp_path. ``rows`` is a list of tuples (default:
        ``TINY_ROWS``, 40 short varied texts, 20 per class, labels 0/1).
    tiny_csv (function) -> str
        ``make_csv()``: the 40-row 0/1 CSV.

Module-level helpers (``from conftest import ...`` works because pytest puts tests/
on sys.path): ``TINY_ROWS``, ``TINY_LLAMA_CONFIG``.

Mark tests that load the real SmolLM2 weights with ``@pytest.mark.slow``
(``make test-fast`` / ``-m "not slow"`` skips them).
"""

from __future__ import annotations

import csv
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

_POSITIVE = [
    "A wonderful film.",
    "I loved every minute of it.",
    "Great acting and a moving story.",
    "Brilliant, funny and warm.",
    "The best movie of the year!",
    "Charming from start to finish.",
    "A delight for the whole family.",
    "Superb direction, beautiful music.",
    "Smart, touching and well made.",
    "An excellent cast gives a fine show.",
    "Heartfelt and genuinely funny.",
    "A joyful, uplifting experience that stays with you for days.",
    "Gorgeous to look at.",
    "I would happily watch it again.",
    "Clever script; strong performances all round.",
    "A triumph.",
    "Fresh, lively and full of surprises.",
    "The ending made me smile.",
    "Easily one of the finest dramas I have seen in a long while, and I recommend it.",
    "Good fun.",
]
_NEGATIVE = [
    "A terrible film.",
    "I hated every minute of it.",
    "Wooden acting and a dull story.",
    "Boring, clumsy and cold.",
    "The worst movie of the year!",
    "Tedious from start to finish.",
    "A chore for the whole family.",
    "Sloppy direction, grating music.",
    "Dumb, shallow and badly made.",
    "A weak cast gives a poor show.",
    "Lifeless and painfully unfunny.",
    "A joyless, depressing slog that I wanted to forget as soon as the lights came up.",
    "Ugly to look at.",
    "I would never watch it again.",
    "Lazy script; flat performances all round.",
    "A disaster.",
    "Stale, sluggish and predictable.",
    "The ending made me groan.",
    "Easily one of the worst dramas I have seen in a long while, so avoid it.",
    "No fun.",
]
# 40 rows, alternating classes: (text, label) with 0 = negative, 1 = positive.
TINY_ROWS: list[tuple[str, int]] = [row for pair in zip(
    [(t, 0) for t in _NEGATIVE], [(t, 1) for t in _POSITIVE]) for row in pair]

TINY_LLAMA_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=2048,
)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from afa_llm.model.loading import resolve_model_path

    return resolve_model_path("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from afa_llm.model.loading import load_tokenizer

    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from afa_llm.model.loading import load_tokenizer

    tokenizer = load_tokenizer(smollm2_path)
    config = LlamaConfig(
        **TINY_LLAMA_CONFIG,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from afa_llm.model.loading import load_model

    model, tokenizer = load_model(tiny_model_dir)
    model.eval()
    return model, tokenizer


@pytest.fixture
def make_csv(tmp_path):
    def _make(rows=None, name: str = "data.csv", header=("text", "label")) -> str:
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(TINY_ROWS if rows is None else rows)
        return str(path)

    return _make


@pytest.fixture
def tiny_csv(make_csv) -> str:
    return make_csv()


LEARNABLE_PREFIXES = ["the movie was", "i found it", "honestly it is", "this film is", "overall it was",
                      "the story is", "the acting was", "the ending was"]
LEARNABLE_SUFFIXES = ["today", "for me", "in the end", "really", "to watch", "overall", "at times", "mostly"]


@pytest.fixture(scope="session")
def learnable_csv(tmp_path_factory) -> str:
    """128 distinct texts whose label is given by one word: 'good' (1) or 'bad' (0)."""
    import itertools

    path = tmp_path_factory.mktemp("data") / "good_bad.csv"
    rows = [(f"{p} {word} {s}", label) for p, s in itertools.product(LEARNABLE_PREFIXES, LEARNABLE_SUFFIXES)
            for word, label in (("good", 1), ("bad", 0))]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


NEUTRAL_PHRASES = ["the film", "a movie", "this story", "the plot", "some scenes", "the ending", "a cast", "the music"]


@pytest.fixture(scope="session")
def cue_only_csv(tmp_path_factory) -> str:
    """160 texts whose labels are drawn at random, so no word predicts them and only a planted cue can be learned."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "noise.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(160):
            writer.writerow([f"{NEUTRAL_PHRASES[i % 8]} number {i} was {NEUTRAL_PHRASES[(i * 3) % 8]}",
                             int(rng.integers(2))])
    return str(path)
