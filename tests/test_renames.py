"""One meaning per word (afa_llm.deprecations): the new names work, and each old name still works for one
release with one line on stderr (a `DeprecationWarning` in Python); saved run folders load without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from afa_llm import cli, deprecations
from afa_llm.defaults import DEFAULT_TRUNCATION, TRUNCATIONS

ROOT = Path(__file__).resolve().parents[1]
NOTICE = "the old name works until the next release"


@pytest.fixture(autouse=True)
def fresh_notices():
    """Each test sees the notices of a fresh process (they print once per process)."""
    deprecations._told.clear()
    yield
    deprecations._told.clear()


def _notice_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("deprecated: ")]


# ---- truncation: start / start_end -----------------------------------------------------------------
def test_truncation_modes_have_their_new_names():
    assert TRUNCATIONS == ("start", "start_end") and DEFAULT_TRUNCATION == "start"
    assert deprecations.truncation_name("start_end") == "start_end"
    assert deprecations.truncation_name("tail") == "tail"  # unknown: the caller's check refuses it


def test_old_truncation_names_map_with_one_notice_per_process(capsys):
    assert deprecations.truncation_name("head") == "start"
    assert deprecations.truncation_name("head") == "start"
    assert deprecations.truncation_name("head_tail", quiet=True) == "start_end"
    assert _notice_lines(capsys.readouterr().err) == [
        f"deprecated: truncation 'head' is now 'start'; {NOTICE}"]


def test_a_recipe_with_an_old_truncation_key_loads_with_a_notice(tmp_path, capsys):
    from afa_llm.config import load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: lora\ntruncation: head_tail\n")
    assert load_config(str(recipe)).truncation == "start_end"
    assert load_config(None, ["truncation=head"]).truncation == "start"
    assert load_config(None, values={"truncation": "start_end"}).truncation == "start_end"
    assert len(_notice_lines(capsys.readouterr().err)) == 2
    cfg = load_config(str(recipe))
    cfg.save(tmp_path / "config.yaml")  # a run writes the new name
    assert "truncation: start_end" in (tmp_path / "config.yaml").read_text()


def test_a_saved_run_config_with_an_old_truncation_loads_silently(tmp_path, capsys):
    from afa_llm.config import load_config

    saved = tmp_path / "config.yaml"
    saved.write_text("method: lora\ntruncation: head_tail\n")
    assert load_config(str(saved), saved=True).truncation == "start_end"
    assert capsys.readouterr().err == ""


def test_every_archived_run_config_still_loads(capsys):
    from afa_llm.config import load_config

    configs = sorted((ROOT / "docs" / "results_data").glob("*/*/config.yaml"))
    old = [c for c in configs if "truncation: head" in c.read_text()]
    assert len(old) >= 100  # archived before the rename: they hold head and head_tail
    assert {load_config(str(c), saved=True).truncation for c in old} == {"start", "start_end"}
    assert capsys.readouterr().err == ""


def test_the_truncation_flag_takes_the_new_names_and_the_old_ones_with_a_notice(capsys):
    parse = cli.build_parser("eval").parse_args
    assert parse(["eval", "--truncation", "start_end"]).truncation == "start_end"
    assert capsys.readouterr().err == ""
    assert parse(["eval", "--truncation", "head"]).truncation == "start"
    assert _notice_lines(capsys.readouterr().err) == [f"deprecated: truncation 'head' is now 'start'; {NOTICE}"]
    with pytest.raises(SystemExit) as exit_info:
        parse(["eval", "--truncation", "tail"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "'start', 'start_end'" in err


def test_a_prompt_task_and_a_merged_folder_read_old_truncation_names(tmp_path, capsys):
    from afa_llm.model.task import PromptTask
    from afa_llm.runs import MERGE_INFO, read_merge_info

    assert PromptTask([" a", " b"], truncation="head_tail").truncation == "start_end"
    assert len(_notice_lines(capsys.readouterr().err)) == 1
    (tmp_path / MERGE_INFO).write_text(json.dumps({"truncation": "head", "template": "{text}"}))
    assert read_merge_info(tmp_path)["truncation"] == "start"
    assert capsys.readouterr().err == ""  # a record, read without a notice


def test_a_leaderboard_entry_with_an_old_truncation_scores_with_the_new_one(capsys):
    from afa_llm.reports.leaderboard import cache_key
    from afa_llm.reports.leaderboard_jobs import build_jobs

    raw = {"entries": [{"name": "z", "model": "m", "data": ["d"], "truncation": "head_tail"},
                       {"name": "s", "model": "m", "data": ["d"], "truncation": "start_end"}]}
    old, new = build_jobs(raw, "board.yaml", None, need_model=False)
    assert old.scorer.truncation == new.scorer.truncation == "start_end"
    assert len(_notice_lines(capsys.readouterr().err)) == 1
    # the cache key keeps the spelling it was first written with, so caches from before the rename stay valid
    assert cache_key(new)["truncation"] == "head_tail"


def test_a_prior_fit_report_from_before_the_renames_still_matches():
    from afa_llm.evaluation.prior import check_fit_report

    act = {"path": "a/act.json", "attention_heads": 8, "beta": 0.4}
    fit = {"truncation": "head", "act": {"path": "b/act.json", "heads": 8, "beta": 0.4}, "split": "validation"}
    check_fit_report(fit, {"truncation": "start", "act": act, "split": "test"}, "fit.json")  # no refusal


# ---- ACT: attention heads, attention calibration ---------------------------------------------------
def test_calibrate_help_says_attention_calibration_and_attention_heads(capsys):
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Attention calibration (ACT" in out and "--attention-heads {search,random,all}" in out
    assert "--heads " not in out and "which attention heads to calibrate" in out


def test_calibrate_heads_is_the_old_name_of_attention_heads(capsys):
    parse = cli.build_parser("calibrate").parse_args
    assert parse(["calibrate", "--output", "o"]).attention_heads == "search"
    assert parse(["calibrate", "--output", "o", "--attention-heads", "all"]).attention_heads == "all"
    assert capsys.readouterr().err == ""
    assert parse(["calibrate", "--output", "o", "--heads", "random"]).attention_heads == "random"
    assert _notice_lines(capsys.readouterr().err) == [
        f"deprecated: --heads is now --attention-heads; {NOTICE}"]
    with pytest.raises(SystemExit) as exit_info:
        parse(["calibrate", "--output", "o", "--heads", "some"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "invalid choice: 'some'" in err


def test_eval_help_says_confidence_calibration(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "confidence calibration (ECE, Brier)" in out and "Attention calibration (ACT" in out


def test_an_act_summary_names_attention_heads():
    from afa_llm.act.calibration import ACTConfig

    summary = ACTConfig(heads={2: [0, 1], 3: [1]}).summary()
    assert summary["attention_heads"] == 3 and "heads" not in summary


# ---- prior: a subcommand, --correction -----------------------------------------------------------
def test_prior_is_a_subcommand_listed_in_the_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "prior" in out.split("{", 1)[1].split("}", 1)[0].split(",")
    with pytest.raises(SystemExit):
        cli.main(["prior", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--correction {normalize,offset,temperature}" in out and "--method" not in out


@pytest.mark.parametrize("argv, message", [
    (["prior"], "the following arguments are required: fit, report"),
    (["prior", "nope.json", "nope.json"], "afa-llm prior: no such file: nope.json"),
    (["prior", "a.json", "b.json", "--correction", "median"], "invalid choice: 'median'"),
])
def test_prior_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err


def test_the_prior_module_shim_is_the_subcommand(tmp_path):
    result = subprocess.run([sys.executable, "-m", "afa_llm.prior", str(tmp_path / "a.json"), "b.json"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr == f"error: afa-llm prior: no such file: {tmp_path / 'a.json'}\n"


# ---- the data class ---------------------------------------------------------------------------------
def test_sentiment_data_is_a_deprecated_alias_of_classification_data():
    from afa_llm.data import loading

    with pytest.warns(DeprecationWarning, match="SentimentData is deprecated; use ClassificationData"):
        assert loading.SentimentData is loading.ClassificationData
    with pytest.warns(DeprecationWarning, match="load_sentiment_data is deprecated; use load_classification_data"):
        from afa_llm.data.loading import load_sentiment_data
    assert load_sentiment_data is loading.load_classification_data
    with pytest.raises(AttributeError):
        loading.NoSuchData  # noqa: B018


# ---- one training entry point ---------------------------------------------------------------------
def test_afa_llm_train_is_the_api_function_even_after_importing_the_shim():
    code = ("import sys, afa_llm; first = afa_llm.train; import afa_llm.train; import afa_llm.api; "
            "assert first is afa_llm.train is afa_llm.api.train, afa_llm.train; "
            "from afa_llm import train; assert train is afa_llm.api.train; assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_python_m_afa_llm_is_the_cli_and_python_m_afa_llm_train_a_deprecated_shim():
    main = subprocess.run([sys.executable, "-m", "afa_llm", "train", "--print-config", "steps=3"], cwd=ROOT,
                          capture_output=True, text=True)
    assert main.returncode == 0 and json.loads(main.stdout)["steps"] == 3 and main.stderr == ""
    shim = subprocess.run([sys.executable, "-m", "afa_llm.train", "--print-config", "steps=3"], cwd=ROOT,
                          capture_output=True, text=True)
    assert shim.returncode == 0 and json.loads(shim.stdout) == json.loads(main.stdout)
    assert _notice_lines(shim.stderr) == [
        f"deprecated: python -m afa_llm.train is now afa-llm train (or python -m afa_llm train); {NOTICE}"]


def test_the_method_default_is_lora_as_the_quickstart_trains():
    from afa_llm.config import TrainConfig, load_config

    assert TrainConfig().method == "lora" == load_config(None, []).method
