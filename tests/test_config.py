"""TrainConfig: YAML recipe + key=value overrides, validated into one-line UserErrors.

Also checks that the shipped recipes and accelerate config files load. No model is loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from afa_llm.cli import main as cli_main
from afa_llm.config import TrainConfig, load_config
from afa_llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def cli_error(capsys, argv: list[str]) -> str:
    """Run `afa-llm ARGV`, expect exit 2 and exactly one stderr line; return that line."""
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# ---- unknown keys ---------------------------------------------------------------------
def test_unknown_override_key_names_it():
    with pytest.raises(UserError, match="'learning_rat'"):
        load_config(None, ["learning_rat=0.1"])


def test_unknown_recipe_key_names_it(tmp_path):
    recipe = write(tmp_path / "r.yaml", "steps: 3\nnum_maskz: 2\n")
    with pytest.raises(UserError, match="'num_maskz'"):
        load_config(recipe)


def test_cli_unknown_key_exits_2_with_one_line(capsys):
    line = cli_error(capsys, ["train", "bogus_key=1"])
    assert "'bogus_key'" in line


def test_cli_unknown_key_in_recipe(capsys, tmp_path):
    recipe = write(tmp_path / "r.yaml", "bogus: 1\n")
    assert "'bogus'" in cli_error(capsys, ["train", recipe, "steps=2"])


# ---- types, choices, ranges ---------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("steps=abc", "steps"),
    ("steps=1.5", "steps"),
    ("learning_rate=fast", "learning_rate"),
    ("advantage_norm=maybe", "advantage_norm"),
    ("output_dir=", "output_dir"),
    ("model= ", "model"),
    ("method=foo", "method"),
    ("quantization=nf8", "quantization"),
    ("num_masks=1", "num_masks"),
    ("mask_ratio=1.5", "mask_ratio"),
    ("mask_ratio=0", "mask_ratio"),
    ("measure_frac=0", "measure_frac"),
    ("uniform_mix=-0.1", "uniform_mix"),
    ("keep_checkpoints=0", "keep_checkpoints"),
    ("log_every=0", "log_every"),
    ("median_window=0", "median_window"),
    ("eval_batch_size=0", "eval_batch_size"),
    ("lambda_pg_warmup_steps=-1", "lambda_pg_warmup_steps"),
    ("template=no slot", "template"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError, match=f"'{key}'"):
        load_config(None, [override])


def test_cli_bad_type_exits_2(capsys):
    assert "'steps'" in cli_error(capsys, ["train", "steps=abc"])


def test_cli_bad_literal_exits_2(capsys):
    line = cli_error(capsys, ["train", "method=foo"])
    assert "'method'" in line and "afa" in line and "lora" in line


def test_override_without_equals_sign():
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["steps"])


def test_lora_masked_ce_takes_random_or_focus_but_not_afas_fake():
    assert load_config(None, ["method=lora", "masked_ce=focus"]).method_config.masked_ce == "focus"
    with pytest.raises(UserError, match="masked_ce"):
        load_config(None, ["method=lora", "masked_ce=fake"])
    assert load_config(None, ["method=lora", "masked_ce=random"]).method_config.masked_ce == "random"


# ---- recipe files ---------------------------------------------------------------------
def test_missing_recipe(tmp_path, capsys):
    with pytest.raises(UserError, match="recipe not found"):
        load_config(str(tmp_path / "nope.yaml"))
    assert "recipe not found" in cli_error(capsys, ["train", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_recipe_must_be_a_mapping(tmp_path, text):
    with pytest.raises(UserError, match="mapping"):
        load_config(write(tmp_path / "r.yaml", text))


def test_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path / "r.yaml", "steps: [1, 2\n"))


def test_empty_recipe_gives_defaults(tmp_path):
    assert load_config(write(tmp_path / "r.yaml", "")) == TrainConfig()


def test_overrides_take_precedence(tmp_path):
    recipe = write(tmp_path / "r.yaml", "steps: 10\nmethod: lora\nlearning_rate: 1.0e-3\nfocus_layers: [0]\n")
    cfg = load_config(recipe, ["steps=20", "method=afa", "focus_layers=[1, -1]"])
    assert (cfg.steps, cfg.method, cfg.learning_rate, cfg.focus_layers) == (20, "afa", 1e-3, [1, -1])
    assert load_config(recipe).steps == 10


def test_typed_parsing_of_overrides():
    cfg = load_config(None, ["method=afa", "steps=7", "learning_rate=5e-3", "mask_ratio=0.3", "advantage_norm=false",
                             "eval_limit=null", "focus_layers=1", "label_names=[neg, pos]", "lr_scheduler=constant"])
    assert cfg.steps == 7 and cfg.learning_rate == 5e-3 and isinstance(cfg.learning_rate, float)
    assert cfg.method_config.mask_ratio == 0.3 and cfg.method_config.advantage_norm is False and cfg.eval_limit is None
    assert cfg.focus_layers == [1] and cfg.label_names == ["neg", "pos"]


def test_exponent_floats_without_dot_in_yaml(tmp_path):
    # YAML 1.1 reads `2e-4` as a string; a recipe author writes it anyway.
    cfg = load_config(write(tmp_path / "r.yaml", "method: afa\nlearning_rate: 2e-4\ndiscriminator_lr: 1E-3\n"))
    assert cfg.learning_rate == 2e-4 and cfg.method_config.discriminator_lr == 1e-3


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["template=Tweet: {text}\nMood:", "learning_rate=3e-5", "label_words=[' a', ' b']",
                             "focus_layers=[-1]", "steps=5"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == cfg


def test_print_config(capsys):
    assert cli_main(["train", "steps=3", "method=lora", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert '"steps": 3' in out and '"method": "lora"' in out


# ---- shipped recipes and accelerate configs ------------------------------------------------
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load(recipe):
    cfg = load_config(str(recipe))
    assert cfg.output_dir.startswith("runs/")


def test_expected_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "imdb.yaml", "tweets.yaml", "gpu_qlora_qwen.yaml"} <= names


def test_gpu_recipe_is_4bit_bf16():
    cfg = load_config(str(ROOT / "recipes" / "gpu_qlora_qwen.yaml"))
    assert cfg.quantization == "nf4" and cfg.dtype == "bf16" and "/" in cfg.model


ACCELERATE = {
    "cpu_1proc.yaml": ("NO", 1, True),
    "cpu_2proc.yaml": ("MULTI_GPU", 2, False),  # MULTI_GPU + ACCELERATE_USE_CPU=1: see the file
    "gpu_1.yaml": ("NO", 1, False),
    "gpu_ddp.yaml": ("MULTI_GPU", None, False),
}


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    kind, processes, use_cpu = ACCELERATE[name]
    config = load_config_from_file(str(ROOT / "accelerate_configs" / name))
    assert str(config.distributed_type).split(".")[-1] == kind
    assert bool(config.use_cpu) is use_cpu
    if processes is not None:
        assert config.num_processes == processes
    # MULTI_CPU (or use_cpu with several processes) silently runs ONE process without mpirun
    assert not (str(config.distributed_type).endswith("MULTI_CPU"))
    raw = yaml.safe_load((ROOT / "accelerate_configs" / name).read_text())
    assert isinstance(raw, dict)


def test_cpu_2proc_documents_the_env_switch():
    text = (ROOT / "accelerate_configs" / "cpu_2proc.yaml").read_text()
    assert "ACCELERATE_USE_CPU=1" in text


# ---- method plug-ins: each method brings its own keys ----------------------------------------
def test_a_method_key_of_another_method_is_refused_naming_it():
    with pytest.raises(UserError, match=r"'num_masks' belongs to method afa, not lora"):
        load_config(None, ["method=lora", "num_masks=4"])
    with pytest.raises(UserError, match=r"'adv_eps' belongs to method at/vat/attn_rp/iat, not afa"):
        load_config(None, ["method=afa", "adv_eps=1"])
    with pytest.raises(UserError, match=r"unknown config key 'afa.num_mask'"):
        load_config(None, ["method=lora", "afa.num_mask=4"])  # sections of other methods are checked too
    with pytest.raises(UserError, match=r"'adv_exclude' has an invalid value"):
        load_config(None, ["method=vat", "adv_exclude=[sink]"])


def test_sections_apply_only_to_their_method(tmp_path):
    recipe = write(tmp_path / "r.yaml", "method: afa\nafa:\n  num_masks: 8\nvat:\n  adv_eps: 3\n")
    assert load_config(recipe).method_config.num_masks == 8
    vat = load_config(recipe, ["method=vat", "vat.adv_xi=0.5"])
    assert (vat.method_config.adv_eps, vat.method_config.adv_xi) == (3.0, 0.5)
    assert "num_masks" not in vat.to_dict() and vat.to_dict()["adv_eps"] == 3.0
    # a run's own config.yaml is flat; older ones held every method's keys: read them, drop the others
    saved = write(tmp_path / "saved.yaml", "method: lora\nnum_masks: 4\nmasked_ce: random\n")
    assert load_config(saved, saved=True).method_config.masked_ce == "random"


def test_train_help_lists_each_methods_keys():
    out = subprocess.run([sys.executable, "-m", "afa_llm.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for text in ("adv_eps=1.0", "adv_exclude=[]", "num_masks=4", "attn_rp:", "iat [EXPERIMENTAL]"):
        assert text in out.stdout, text


def test_the_scorer_and_data_keys_come_from_the_specs_and_a_run_holds_each():
    import dataclasses

    from afa_llm.commands.options import DATA_OPTIONS, SCORER_OPTIONS
    from afa_llm.config import SHARED_KEYS
    from afa_llm.defaults import EVAL_MAX_TEXT_TOKENS, TRAIN_MAX_TEXT_TOKENS
    from afa_llm.model.task import PromptTask
    from afa_llm.specs import DATA_KEYS, PROMPT_KEYS, DataSpec, ScorerSpec

    assert set(PROMPT_KEYS) | set(DATA_KEYS) <= set(SHARED_KEYS)  # a run's config.yaml answers every key
    assert DATA_OPTIONS == tuple(f.name for f in dataclasses.fields(DataSpec))
    assert set(SCORER_OPTIONS) == {f.name for f in dataclasses.fields(ScorerSpec)} - {"model", "adapter"}
    # the text budget: 96 for training, 256 for scoring without a run (afa_llm.defaults says why)
    assert TrainConfig().max_text_tokens == TRAIN_MAX_TEXT_TOKENS < EVAL_MAX_TEXT_TOKENS
    assert ScorerSpec().max_text_tokens == PromptTask([" a", " b"]).max_text_tokens == EVAL_MAX_TEXT_TOKENS
