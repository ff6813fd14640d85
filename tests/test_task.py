"""Tests of afa_llm.model.task: prompt encoding, truncation inside the text, left padding, demos."""

from __future__ import annotations

import pytest
import torch

from afa_llm.errors import UserError
from afa_llm.model.task import EncodedBatch, PromptTask, draw_demonstrations, drop_unattended, position_ids_from_mask, truncate
from conftest import TINY_ROWS

TEXTS = [
    "Fine.",
    "A long, winding, occasionally brilliant but mostly exhausting film that never ends and "
    "keeps going well past the point where anyone in the audience still cares about it.",
    "Not bad at all, really.",
    "Wow",
]


def _task(tokenizer, **kwargs) -> PromptTask:
    return PromptTask([" negative", " positive"], **kwargs).bind(tokenizer)


def _enc(tokenizer, s: str) -> list[int]:
    return tokenizer.encode(s, add_special_tokens=False)


def test_label_words_bind_to_single_tokens(smollm2_tokenizer):
    task = PromptTask([" negative", " neutral", " positive"]).bind(smollm2_tokenizer)
    assert task.label_token_ids == [_enc(smollm2_tokenizer, w)[0] for w in (" negative", " neutral", " positive")]
    assert task.num_classes == 3


def test_multi_token_label_words_bind_to_token_sequences(smollm2_tokenizer):
    task = PromptTask([" supercalifragilistic", " positive"]).bind(smollm2_tokenizer)
    assert [len(t) for t in task.label_token_seqs] == [6, 1]
    assert task.label_token_seqs[0] == _enc(smollm2_tokenizer, " supercalifragilistic")
    with pytest.raises(UserError, match="one token each"):
        task.label_token_ids  # ACT and the TRL baseline need one-token words
    assert task.classifier_init_rows() is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(label_words=[" a", " b"], template="no slot"), "exactly once"),
        (dict(label_words=[" a", " b"], template="{text} and {text}"), "exactly once"),
        (dict(label_words=[" a"]), "at least two"),
        (dict(label_words=[" a", " a"]), "distinct"),
        (dict(label_words=[" a", " b"], max_text_tokens=0), "must be positive"),
        (dict(label_words=[" a", " b"], demo_text_tokens=-1), "must be positive"),
        (dict(label_words=[" a", " b"], truncation="tail"), "start, start_end"),
    ],
)
def test_bad_task_definitions_raise(kwargs, message):
    with pytest.raises(UserError, match=message):
        PromptTask(**kwargs)


def test_encoding_before_bind_is_an_error():
    with pytest.raises(RuntimeError, match="bind"):
        PromptTask([" negative", " positive"]).prompt_ids("text")


def test_rows_are_prefix_text_suffix_left_padded(smollm2_tokenizer):
    tok = smollm2_tokenizer
    task = _task(tok)
    batch = task.encode(TEXTS, labels=[0, 1, 1, 0])
    prefix, suffix = _enc(tok, "Review:"), _enc(tok, "\nSentiment:")
    width = batch.input_ids.shape[1]
    for i, text in enumerate(TEXTS):
        text_ids = _enc(tok, " " + text)
        expected = prefix + text_ids + suffix
        pad = width - len(expected)
        assert batch.input_ids[i, pad:].tolist() == expected
        assert batch.input_ids[i, :pad].tolist() == [tok.pad_token_id] * pad
        assert batch.attention_mask[i].tolist() == [0] * pad + [1] * len(expected)
        assert batch.position_ids[i].tolist() == [0] * pad + list(range(len(expected)))
        text_start = pad + len(prefix)
        mask = [False] * width
        mask[text_start : text_start + len(text_ids)] = [True] * len(text_ids)
        assert batch.text_mask[i].tolist() == mask
    assert batch.labels.tolist() == [0, 1, 1, 0]
    # The longest row has no padding.
    assert batch.attention_mask.sum(1).max().item() == width
    # The decoded prompt is exactly the template filled with the text.
    row = batch.input_ids[0][batch.attention_mask[0].bool()]
    assert tok.decode(row) == "Review: Fine.\nSentiment:"


@pytest.mark.parametrize("max_text_tokens", [1, 3, 8])
def test_truncation_never_cuts_template_or_answer_position(smollm2_tokenizer, max_text_tokens):
    tok = smollm2_tokenizer
    task = _task(tok, max_text_tokens=max_text_tokens)
    batch = task.encode(TEXTS)
    prefix, suffix = _enc(tok, "Review:"), _enc(tok, "\nSentiment:")
    for i, text in enumerate(TEXTS):
        real = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        text_ids = _enc(tok, " " + text)[:max_text_tokens]
        assert real[-len(suffix) :] == suffix  # the answer position is the last token
        assert real[: len(prefix)] == prefix
        assert real == prefix + text_ids + suffix
        assert batch.text_mask[i].sum().item() == len(text_ids) <= max_text_tokens
        assert batch.input_ids[i][batch.text_mask[i]].tolist() == text_ids
    assert batch.input_ids.shape[1] <= len(prefix) + max_text_tokens + len(suffix)


def test_truncate_keeps_the_start_or_the_start_and_the_end():
    ids = list(range(20))
    assert truncate(ids, 8) == truncate(ids, 8, "start") == list(range(8))
    assert truncate(ids, 8, "start_end") == [0, 1] + list(range(14, 20))  # the first quarter, then the end
    assert truncate(ids, 20, "start_end") == ids and truncate(ids[:3], 8, "start_end") == ids[:3]
    assert truncate(ids, 1, "start_end") == [19]
    with pytest.raises(ValueError, match="start, start_end"):
        truncate(ids, 8, "tail")


def test_start_end_truncation_in_the_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = " ".join(f"w{i}" for i in range(60))
    task = _task(tok, max_text_tokens=16, truncation="start_end")
    batch = task.encode([text])
    full = _enc(tok, " " + text)
    assert batch.input_ids[0][batch.text_mask[0]].tolist() == full[:4] + full[-12:]
    real = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert real[-len(_enc(tok, "\nSentiment:")):] == _enc(tok, "\nSentiment:")


def test_template_without_trailing_space(smollm2_tokenizer):
    tok = smollm2_tokenizer
    task = PromptTask([" negative", " positive"], template="Text:{text}\nLabel:").bind(tok)
    ids, start, end = task.prompt_ids("hello world")
    assert ids[start:end] == _enc(tok, "hello world")
    assert tok.decode(ids) == "Text:hello world\nLabel:"


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


def test_drop_unattended_deletes_columns_and_left_pads_again():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [0, 1, 2, 3, 4, 9]])
    attn = torch.tensor([[0, 0, 1, 0, 1, 1], [1, 0, 1, 1, 0, 1]])
    pos = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    text = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    out = drop_unattended(EncodedBatch(ids, attn, pos, text, torch.tensor([1, 0])), pad_id=99)
    assert out.input_ids.tolist() == [[99, 5, 7, 8], [0, 2, 3, 9]]
    assert out.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert out.position_ids.tolist() == [[0, 0, 2, 3], [0, 2, 3, 5]]  # original positions kept
    assert out.text_mask.tolist() == [[False, True, True, False], [False, True, True, False]]
    assert out.labels.tolist() == [1, 0]


def test_few_shot_demos_come_before_the_query(smollm2_tokenizer):
    tok = smollm2_tokenizer
    task = _task(tok)
    demos = [("Loved it.", 1), ("Hated it.", 0)]
    ids, start, end = task.prompt_ids("So-so.", demos)
    assert tok.decode(ids) == (
        "Review: Loved it.\nSentiment: positive\n\n"
        "Review: Hated it.\nSentiment: negative\n\n"
        "Review: So-so.\nSentiment:"
    )
    assert ids[start:end] == _enc(tok, " So-so.")
    assert ids[-len(_enc(tok, "\nSentiment:")) :] == _enc(tok, "\nSentiment:")
    # In a batch, the text mask marks the query's text only, never the demos'.
    batch = task.encode(["So-so.", "Great."], demos=[demos, demos[:1]])
    for i, query in enumerate(["So-so.", "Great."]):
        assert batch.input_ids[i][batch.text_mask[i]].tolist() == _enc(tok, " " + query)


def test_demo_texts_are_truncated_to_demo_text_tokens(smollm2_tokenizer):
    tok = smollm2_tokenizer
    task = _task(tok, demo_text_tokens=2)
    long_demo = TEXTS[1]
    ids, start, _ = task.prompt_ids("Ok.", [(long_demo, 0)])
    demo_block = _enc(tok, "Review:") + _enc(tok, " " + long_demo)[:2] + _enc(tok, "\nSentiment:")
    demo_block += [task.label_token_ids[0]] + _enc(tok, "\n\n")
    assert ids[: len(demo_block)] == demo_block
    assert start == len(demo_block) + len(_enc(tok, "Review:"))


def test_draw_demonstrations_is_seeded_and_covers_classes():
    texts = [t for t, _ in TINY_ROWS]
    labels = [y for _, y in TINY_ROWS]
    a = draw_demonstrations(texts, labels, shots=4, n_queries=10, seed=0)
    b = draw_demonstrations(texts, labels, shots=4, n_queries=10, seed=0)
    c = draw_demonstrations(texts, labels, shots=4, n_queries=10, seed=1)
    assert a == b
    assert a != c
    assert len(a) == 10 and all(len(d) == 4 for d in a)
    pool = set(TINY_ROWS)
    for demos in a:
        assert set(demos) <= pool
        assert {y for _, y in demos} == {0, 1}  # shots >= classes: every class appears
    assert draw_demonstrations(texts, labels, shots=0, n_queries=3, seed=0) == [[], [], []]


class _BosTokenizer:
    """Adds <bos>=2 when asked for special tokens but reports add_bos_token=False (Gemma 3 in transformers 5)."""

    add_bos_token = False
    bos_token_id = 2

    def encode(self, text, add_special_tokens=True):
        ids = [10 + (ord(c) % 50) for c in text]
        return ([2] if add_special_tokens else []) + ids


class _EosTokenizer(_BosTokenizer):
    def encode(self, text, add_special_tokens=True):
        ids = [10 + (ord(c) % 50) for c in text]
        return ids + ([1] if add_special_tokens else [])


def test_leading_special_tokens_read_off_the_encoding():
    from afa_llm.model.task import leading_special_tokens

    assert leading_special_tokens(_BosTokenizer()) == [2]
    assert leading_special_tokens(_EosTokenizer()) == []  # a trailing EOS is not a prefix
