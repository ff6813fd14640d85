"""`afa-llm focus`: escaping, one span per text token, focus sums to 1, the trainer's focus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from afa_llm import cli
from afa_llm.attention.focus_math import focus_distribution
from afa_llm.attention.probe import AnswerAttentionProbe
from afa_llm.model.adapters import attach_adapter
from afa_llm.model.loading import load_model
from afa_llm.model.task import PromptTask
from tiny_runs import make_run

EVIL = "<script>alert(1)</script> a great & moving film"
TEXTS = [EVIL, "a dull and lifeless mess", "I loved every minute"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir) -> dict:
    run = make_run(tmp_path_factory.mktemp("focus") / "run", tiny_model_dir, seed=3, b_std=0.3)
    return {"base": tiny_model_dir, "run": run}


def side_cells(page: str) -> list[list[str]]:
    """Per table row, the html of each side's token block."""
    rows = re.findall(r'<tr class="row">(.*?)</tr>', page, flags=re.S)
    return [re.findall(r'<div class="text">(.*?)</div>', row, flags=re.S) for row in rows]


def direct_focus(model, tokenizer, text: str, layers: list[int]) -> torch.Tensor:
    """Focus computed here from the probe and focus_math, to compare with the report."""
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    batch = task.encode([text])
    with torch.no_grad(), AnswerAttentionProbe(model, layers, batch.attention_mask) as probe:
        model(**batch.model_inputs())
        focus = focus_distribution(probe.answer_attention(), batch.text_mask)
    return focus[0][batch.text_mask[0]]


def test_focus_page_escapes_and_has_one_span_per_text_token(tiny, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["focus", "--model", tiny["base"], "--adapter", str(tiny["run"]), "--output", str(out)]
    assert cli.main([*argv, *(a for t in TEXTS for a in ("--text", t))]) == 0
    page = (out / "focus.html").read_text()
    assert "<script" not in page and "</script" not in page  # the raw tag never appears
    assert ">&lt;/</span>" in page and "> &amp;</span>" in page  # "</" and "&" shown, escaped
    assert not re.search(r"https?://|<link|src=|<img", page)  # self-contained
    assert (out / "focus.png").read_bytes()[:4] == b"\x89PNG"

    report = json.loads((out / "focus.json").read_text())
    model, tokenizer = load_model(tiny["base"])
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    cells = side_cells(page)
    assert len(cells) == len(TEXTS) and report["sides"] == ["base", "adapter"]
    for text, row, item in zip(TEXTS, cells, report["texts"]):
        n_tokens = len(task.text_ids(text))
        assert len(row) == 2 and all(cell.count('class="tok"') == n_tokens for cell in row)
        for cell, side in zip(row, report["sides"]):
            values = [float(v) for v in re.findall(r'data-focus="([^"]+)"', cell)]
            assert sum(values) == pytest.approx(1.0, abs=1e-5)
            assert sum(item[side]["focus"]) == pytest.approx(1.0, abs=1e-5)
            assert sum(item[side]["probs"]) == pytest.approx(1.0, abs=1e-5)
        assert len(item["tokens"]) == n_tokens

    # the same focus as the trainer's definition, for the base and the adapter
    assert report["focus_layers"] == [1]  # the last third of 2 layers
    base_focus = direct_focus(model, tokenizer, EVIL, [1])
    torch.testing.assert_close(torch.tensor(report["texts"][0]["base"]["focus"]), base_focus, atol=1e-6, rtol=0)
    adapted = attach_adapter(load_model(tiny["base"])[0], str(tiny["run"]))
    adapter_focus = direct_focus(adapted, tokenizer, EVIL, [1])
    torch.testing.assert_close(torch.tensor(report["texts"][0]["adapter"]["focus"]), adapter_focus, atol=1e-6, rtol=0)
    assert (adapter_focus - base_focus).abs().max() > 1e-4  # the two sides really differ
    capsys.readouterr()


def test_focus_on_data_reports_fake_focus_share(tiny, tiny_csv, tmp_path):
    out = tmp_path / "report"
    assert cli.main(["focus", "--model", tiny["base"], "--adapter", str(tiny["run"] / "adapter"), "--data", tiny_csv,
                     "--n", "3", "--metric-n", "6", "--focus-layers=-1,0", "--output", str(out)]) == 0
    report = json.loads((out / "focus.json").read_text())
    assert len(report["texts"]) == 3 and report["focus_layers"] == [0, 1]
    assert all(item["label"] in (0, 1) for item in report["texts"])
    share = report["fake_focus"]
    assert share["examples"] == 6 and share["frequent_token_types"] >= 1
    for side in ("base", "adapter"):
        assert 0 <= share[side]["focus_share"] <= 1 and share[side]["normalised"] > 0
    page = (out / "focus.html").read_text()
    assert page.count('<tr class="row">') == 3 and "Fake-focus share" in page
    metrics = report["focus_metrics"]
    assert set(metrics) == {"base", "adapter"} and metrics["adapter"]["faithfulness_n"] == 6
    assert metrics["base"]["lexicon_n"] >= 1 and "human-rated words" in page


def _refused(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_input(tiny, tmp_path, capsys):
    out = ["--output", str(tmp_path / "o")]
    assert "--text" in _refused(capsys, ["focus", "--model", tiny["base"], *out])
    assert "not both" in _refused(capsys, ["focus", "--model", tiny["base"], "--text", "hi", "--data", "x.csv", *out])
    assert "not found" in _refused(capsys, ["focus", "--model", tiny["base"], "--adapter", str(tmp_path / "nope"),
                                            "--text", "a fine film", *out])
    assert "--n" in _refused(capsys, ["focus", "--model", tiny["base"], "--data", "rt", "--n", "0", *out])
    assert not Path(tmp_path / "o").exists()


def test_a_run_folder_brings_its_prompt_and_its_datas_split_seed(make_csv, tiny_model_dir, tmp_path, capsys):
    """`focus --adapter RUN --data <the run's data>` renders the run's own test split, with its prompt."""
    import yaml

    from afa_llm.data.loading import load_classification_data

    data = make_csv(name="run_data.csv")
    run = make_run(tmp_path / "run", tiny_model_dir, data=data, seed=1)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(split_seed=3, template="Text: {text}\nLabel:")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "report"
    assert cli.main(["focus", "--adapter", str(run), "--data", data, "--n", "3", "--output", str(out)]) == 0
    report = json.loads((out / "focus.json").read_text())
    test_texts = list(load_classification_data(data, split_seed=3).split("test")["text"][:3])
    assert [item["text"] for item in report["texts"]] == test_texts
    assert load_classification_data(data, split_seed=0).split("test")["text"][:3] != test_texts  # the seed matters
    assert report["template"] == "Text: {text}\nLabel:" and report["model"] == tiny_model_dir

    assert cli.main(["focus", "--adapter", str(run), "--text", "a fine film", "--output", str(out)]) == 0
    report = json.loads((out / "focus.json").read_text())
    assert [item["text"] for item in report["texts"]] == ["a fine film"] and "fake_focus" not in report
    capsys.readouterr()
