"""`afa_llm.training.trainer` end to end on the tiny random Llama (a few seconds per run).

- both methods learn a trivially learnable data set ('good' / 'bad'), write pruned
  checkpoints, metrics.jsonl, results.json and a loadable adapter;
- a second run into the same output_dir needs resume_from (or overwrite, which starts clean);
- a run killed with SIGKILL and resumed with resume_from=latest ends with the same adapter and
  discriminator as an uninterrupted run (the mask sampler RNG and running median restored);
- a NaN loss stops training with TrainingDiverged naming the step; the last checkpoint stays;
- the nf4 (bitsandbytes 4-bit) path trains;
- ``mixed_precision=bf16`` autocasts every training forward, also those through the unwrapped model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from afa_llm.methods.afa import AFAMethod
from afa_llm.methods.lora import LoRAMethod
from afa_llm.training.checkpoint import list_checkpoints, load_trainer_state
from afa_llm.cli import main as cli_main
from afa_llm.config import load_config
from afa_llm.errors import TrainingDiverged, UserError
from afa_llm.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
AFA_METRICS = {"loss_cls", "loss_pg", "disc_loss", "disc_acc", "reward_mean", "effect_mean", "focus_entropy",
               "fake_focus_share", "step_time", "tokens_per_s"}
LORA_METRICS = {"loss_cls", "focus_entropy", "fake_focus_share", "step_time", "tokens_per_s"}
ADV_METRICS = LORA_METRICS | {"adv_ce", "adv_kl", "adv_random_kl", "adv_norm", "adv_eps_rms", "adv_first_token_share"}


def tiny_overrides(run_dir, model_dir, data, *extra: str) -> list[str]:
    return [f"output_dir={run_dir}", f"model={model_dir}", f"data={data}", "quantization=none",
            "batch_size=4", "max_text_tokens=32", "eval_limit=8", "test_limit=8", "focus_eval_limit=8",
            "eval_batch_size=8", "report_to=none", "progress=false", "learning_rate=5e-3",
            "lr_scheduler=constant", "afa.lambda_pg_warmup_steps=0", "afa.num_masks=4", *extra]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def adapter_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ---- end to end -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["afa", "lora", "vat", pytest.param("at", marks=pytest.mark.slow),
                                    pytest.param("attn_rp", marks=pytest.mark.slow)])
def test_end_to_end(method, tiny_model_dir, learnable_csv, tmp_path, monkeypatch):
    import afa_llm.evaluation.word_focus as word_focus

    monkeypatch.setattr(word_focus, "text_focus", None)  # the final evaluation's focus comes from its test passes
    run = tmp_path / "run"
    overrides = tiny_overrides(run, tiny_model_dir, learnable_csv, f"method={method}", "steps=30",
                               "save_every=10", "keep_checkpoints=2", "eval_every=10", "afa.num_masks=2")
    results = train(load_config(None, overrides))

    # it learns
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 31))
    losses = [m["loss_cls"] for m in metrics]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    expected = {"afa": AFA_METRICS, "lora": LORA_METRICS}.get(method, ADV_METRICS)
    for m in metrics:
        assert expected <= set(m), expected - set(m)
        if method != "afa":
            assert not {"loss_pg", "disc_loss", "disc_acc", "reward_mean"} & set(m)
        else:
            assert 0 <= m["disc_acc"] <= 1 and m["effect_mean"] >= 0
        if method in ("vat", "attn_rp"):
            assert m["adv_norm"] == pytest.approx(1.0, rel=1e-3)  # also once VAT's gradient underflows
        if method in ("at", "vat", "attn_rp"):  # AT's r is 0 where L_cls is flat (a saturated example)
            assert m["adv_norm"] <= 1.0 + 1e-3 and 0 <= m["adv_first_token_share"] <= 1
            assert 0 < m["adv_eps_rms"] < 1 and m["adv_kl"] >= 0 and m["adv_random_kl"] >= 0
    assert [m["step"] for m in metrics if "val_accuracy" in m] == [10, 20, 30]

    # checkpoints: pruned to the newest two, each complete
    assert [p.name for p in list_checkpoints(run)] == ["step-000020", "step-000030"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    for ckpt in list_checkpoints(run):
        assert (ckpt / "adapter" / "adapter_config.json").exists()
        assert (ckpt / "config.yaml").exists()
        state = load_trainer_state(ckpt)
        assert state["step"] == int(ckpt.name.split("-")[1])
        assert {"optimizer", "scheduler", "method", "rng"} <= set(state)
        assert ({"discriminator", "discriminator_optimizer", "median"} <= set(state["method"])) == (method == "afa")
    assert load_config(str(run / "config.yaml")).method == method

    # results.json
    saved = json.loads((run / "results.json").read_text())
    assert saved["method"] == method and saved["model"] == tiny_model_dir and saved["data"] == learnable_csv
    assert (saved["split_seed"], saved["seed"], saved["steps"], saved["num_processes"]) == (0, 0, 30, 1)
    assert saved["test"]["n"] == 8 and 0 <= saved["test"]["accuracy"] <= 1 and 0 <= saved["test"]["macro_f1"] <= 1
    assert 0 <= saved["zero_shot"]["accuracy"] <= 1
    assert saved["fake_focus_share"]["adapter"] > 0 and saved["fake_focus_share"]["base"] > 0
    for side in ("adapter", "base"):  # the lexicon metrics by default; faithfulness is opt-in
        assert "lexicon_share" in saved["focus_metrics"][side] and "faithfulness_n" not in saved["focus_metrics"][side]
    assert [v["step"] for v in saved["validation"]] == [10, 20, 30]
    assert results["test"]["accuracy"] == saved["test"]["accuracy"]
    assert saved["machine"]["cpu"] and saved["machine"]["torch"] == torch.__version__  # where it was measured

    # the adapter loads with peft and reproduces the run's test predictions
    from peft import PeftModel

    from afa_llm.data.loading import load_classification_data
    from afa_llm.evaluation.evaluate import evaluate_dataset
    from afa_llm.model.loading import load_model
    from afa_llm.model.task import PromptTask

    base, tokenizer = load_model(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    data = load_classification_data(learnable_csv)
    task = PromptTask(saved["label_words"], template=saved["template"], max_text_tokens=32).bind(tokenizer)
    report = evaluate_dataset(model, task, data.split("test").select(range(8)), data.label_names, progress=False)
    assert report["predictions"] == saved["test"]["predictions"]
    assert max_diff(adapter_state(run / "adapter"), adapter_state(run / "checkpoints/step-000030/adapter")) == 0

    # a second run into the same folder must say how to continue
    with pytest.raises(UserError, match="resume_from"):
        train(load_config(None, overrides))


def test_overwrite_starts_clean(tiny_model_dir, learnable_csv, tmp_path):
    run = tmp_path / "run"
    base = tiny_overrides(run, tiny_model_dir, learnable_csv, "method=lora", "eval_every=0",
                          "evaluate_zero_shot=false", "test_limit=4", "focus_eval_limit=4")
    train(load_config(None, [*base, "steps=6", "save_every=3"]))
    assert [p.name for p in list_checkpoints(run)] == ["step-000003", "step-000006"]
    train(load_config(None, [*base, "steps=2", "save_every=1", "overwrite=true"]))
    # the stale step-3/step-6 of the first run must neither win the pruning nor a later resume
    assert [p.name for p in list_checkpoints(run)] == ["step-000001", "step-000002"]
    assert [m["step"] for m in read_metrics(run)] == [1, 2]
    assert json.loads((run / "results.json").read_text())["steps"] == 2

    # a checkpoint written by two processes cannot be resumed exactly by one
    ckpt = list_checkpoints(run)[-1]
    state = load_trainer_state(ckpt)
    state["rng"] = state["rng"] * 2
    torch.save(state, ckpt / "trainer_state.pt")
    with pytest.raises(UserError, match="2 process"):
        train(load_config(None, [*base, "steps=3", "resume_from=latest"]))


def test_bad_focus_layer_is_a_user_error(tiny_model_dir, learnable_csv, tmp_path):
    with pytest.raises(UserError, match="focus_layers"):
        train(load_config(None, tiny_overrides(tmp_path / "run", tiny_model_dir, learnable_csv, "steps=1",
                                               "focus_layers=[5]")))


def test_multi_token_label_words_with_gradient_checkpointing_are_a_user_error(tiny_model_dir, learnable_csv,
                                                                              tmp_path):
    """Their later tokens read the prompt's KV cache, which activation checkpointing turns off."""
    with pytest.raises(UserError, match="gradient_checkpointing"):
        train(load_config(None, tiny_overrides(tmp_path / "run", tiny_model_dir, learnable_csv, "steps=1",
                                               "gradient_checkpointing=true",
                                               "label_words=[' terriblyawful', ' positive']")))


# ---- NaN -----------------------------------------------------------------------------------
@pytest.fixture
def nan_at_third_step(monkeypatch):
    def nan_at_step_2(original):
        def call(self, model, batch, clean, step):
            loss, metrics = original(self, model, batch, clean, step)
            if step == 2:  # 0-based: the third step
                loss = loss * float("nan")
            return loss, metrics
        return call

    for method in (AFAMethod, LoRAMethod):
        monkeypatch.setattr(method, "loss", nan_at_step_2(method.loss))


def test_nan_stops_training_and_keeps_the_checkpoint(nan_at_third_step, tiny_model_dir, learnable_csv,
                                                     tmp_path, capsys):
    run = tmp_path / "run"
    overrides = tiny_overrides(run, tiny_model_dir, learnable_csv, "method=afa", "steps=6", "save_every=2",
                               "eval_every=0")
    with pytest.raises(TrainingDiverged, match=r"at step 3\b") as info:
        train(load_config(None, overrides))
    assert "step-000002" in str(info.value) and "\n" not in str(info.value)
    assert [p.name for p in list_checkpoints(run)] == ["step-000002"]
    assert not (run / "results.json").exists() and not (run / "adapter").exists()
    ckpt = run / "checkpoints" / "step-000002"
    state = load_trainer_state(ckpt)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in adapter_state(ckpt / "adapter").values())
    from peft import PeftModel

    from afa_llm.model.loading import load_model

    PeftModel.from_pretrained(load_model(tiny_model_dir)[0], str(ckpt / "adapter"))  # loads

    # the command line: a non-zero exit and a one-line error, no traceback
    capsys.readouterr()
    code = cli_main(["train", *tiny_overrides(tmp_path / "cli", tiny_model_dir, learnable_csv, "method=lora",
                                              "steps=4", "save_every=2", "eval_every=0")])
    err = capsys.readouterr().err
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # progress=false: no loading bars either
    assert lines[0].startswith("error: ") and "step 3" in lines[0]


# ---- nf4 ---------------------------------------------------------------------------------------
def test_nf4_trains(tiny_model_dir, learnable_csv, tmp_path):
    pytest.importorskip("bitsandbytes")
    run = tmp_path / "run"
    results = train(load_config(None, [*tiny_overrides(run, tiny_model_dir, learnable_csv, "method=afa",
                                                       "steps=3", "save_every=0", "eval_every=2",
                                                       "evaluate_zero_shot=false"), "quantization=nf4"]))
    assert results["quantization"] == "nf4"
    metrics = read_metrics(run)
    assert len(metrics) == 3 and all(math.isfinite(m["loss_cls"]) and math.isfinite(m["loss_pg"]) for m in metrics)
    weights = adapter_state(run / "adapter")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # it moved
    assert all(torch.isfinite(v).all() for v in weights.values())
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir


@pytest.mark.parametrize("mixed_precision,expected", [("no", {torch.float32}), ("bf16", {torch.bfloat16})])
def test_mixed_precision_autocasts_every_training_forward(mixed_precision, expected, tiny_model_dir, learnable_csv,
                                                          tmp_path, monkeypatch, capsys):
    """The clean pass goes through Accelerate's wrapped model, the masked passes through the
    unwrapped peft model: both must run under the autocast, and so does the evaluation inside
    training (validation, test, zero-shot), so that a run's numbers come from one precision.
    On a CPU without bf16 instructions (pretended here) a bf16 run warns once and goes on."""
    import afa_llm.provenance as provenance
    import afa_llm.training.trainer as train_module

    monkeypatch.setattr(provenance, "cpu_bf16_native", lambda capabilities=None: False)

    seen: list[torch.dtype] = []
    build = train_module.build_model

    def build_and_watch(cfg, accelerator, label_names=None):
        model, tokenizer = build(cfg, accelerator, label_names)
        q_proj = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj.base_layer"))
        q_proj.register_forward_hook(lambda mod, args, out: seen.append((mod.training, out.dtype)))
        return model, tokenizer

    monkeypatch.setattr(train_module, "build_model", build_and_watch)
    run = tmp_path / "run"
    train(load_config(None, tiny_overrides(run, tiny_model_dir, learnable_csv, "method=afa", "steps=2",
                                           "save_every=0", "eval_every=2", f"mixed_precision={mixed_precision}")))
    training = [dtype for in_training, dtype in seen if in_training]
    evaluation = [dtype for in_training, dtype in seen if not in_training]
    # per step: one clean pass and the masked passes; then validation, test and zero-shot
    assert len(training) >= 4 and set(training) == expected, seen
    assert len(evaluation) >= 3 and set(evaluation) == expected, seen  # like HF Trainer's bf16=True
    assert all(math.isfinite(m["loss_pg"]) for m in read_metrics(run))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "bf16 on a CPU without" in line]
    assert len(warnings) == (mixed_precision == "bf16")


# ---- resume after SIGKILL ---------------------------------------------------------------------
def _subprocess_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in list(env):  # a launcher's leftovers must not turn this into a distributed run
        if key.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_")):
            env.pop(key)
    return env


def _launch(overrides: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "afa_llm", "train", *overrides], cwd=ROOT, env=_subprocess_env(),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


@contextlib.contextmanager
def torch_threads(n: int):
    """In-process runs with the thread count of the subprocess (OMP_NUM_THREADS=1), so that
    the reductions, and hence the numbers, are the same in both."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["afa", pytest.param("vat", marks=pytest.mark.slow)])
def test_resume_after_sigkill_matches_uninterrupted_run(method, tiny_model_dir, learnable_csv, tmp_path):
    # lora_dropout > 0 makes the torch RNG matter too; median significance makes the running
    # median matter for the discriminator; warm-up 0 makes the mask sampler matter for the adapter;
    # VAT's random start is drawn per example and step, so it needs no state of its own.
    own = ["significance=median"] if method == "afa" else ["adv_eps=1"]
    common = [f"method={method}", "steps=8", "save_every=2", "eval_every=4", "eval_limit=4", "lora_dropout=0.1",
              "evaluate_zero_shot=false", "test_limit=4", "focus_eval_limit=4", "keep_checkpoints=2", *own]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    victim = _launch(tiny_overrides(killed, tiny_model_dir, learnable_csv, *common), tmp_path / "killed.log")
    outcome: dict = {}

    def kill_at_step_4():  # polls while the uninterrupted reference trains in this process
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / "step-000004").exists():
            if victim.poll() is not None or time.monotonic() > deadline:
                outcome["early_exit"] = victim.poll()
                return
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        outcome["killed"] = True

    killer = threading.Thread(target=kill_at_step_4, daemon=True)
    killer.start()
    try:
        with torch_threads(1):
            train(load_config(None, tiny_overrides(straight, tiny_model_dir, learnable_csv, *common)))
        killer.join(240)
    finally:
        if victim.poll() is None and not killer.is_alive():
            victim.kill()
    victim.wait(30)
    assert outcome.get("killed"), (outcome, (tmp_path / "killed.log").read_text())
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists() and not (killed / "checkpoints" / "step-000008").exists()
    last = list_checkpoints(killed)[-1].name
    assert last in ("step-000004", "step-000006")

    with torch_threads(1):
        train(load_config(None, tiny_overrides(killed, tiny_model_dir, learnable_csv, *common,
                                               "resume_from=latest")))

    assert max_diff(adapter_state(killed / "adapter"), adapter_state(straight / "adapter")) <= 1e-6
    final_a = load_trainer_state(killed / "checkpoints" / "step-000008")
    final_b = load_trainer_state(straight / "checkpoints" / "step-000008")
    if method == "afa":
        assert max_diff(final_a["method"]["discriminator"], final_b["method"]["discriminator"]) <= 1e-6
        assert final_a["method"]["median"]["values"] == pytest.approx(final_b["method"]["median"]["values"],
                                                                      abs=1e-6)
    # metrics.jsonl: each step once, the same numbers as the uninterrupted run
    a, b = read_metrics(killed), read_metrics(straight)
    assert [m["step"] for m in a] == list(range(1, 9))
    for x, y in zip(a, b):
        keys = ("loss_cls", "loss_pg", "disc_loss", "effect_mean") if method == "afa" else ("loss_cls", "adv_kl")
        for key in keys:
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["step"], key)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (killed, straight))
    assert ra["validation"] == rb["validation"] and ra["test"]["predictions"] == rb["test"]["predictions"]


# ---- small helpers -----------------------------------------------------------------------------
def test_filler_token_id(smollm2_tokenizer):
    from afa_llm.attention.masking import filler_token_id

    tok = smollm2_tokenizer
    assert filler_token_id(tok, None) == tok.pad_token_id
    the = tok.encode(" the", add_special_tokens=False)
    assert filler_token_id(tok, " the") == the[0] == filler_token_id(tok, tok.convert_ids_to_tokens(the[0]))
    assert filler_token_id(tok, tok.eos_token) == tok.eos_token_id
    with pytest.raises(UserError, match="filler_token"):
        filler_token_id(tok, " antidisestablishmentarianism")
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    with pytest.raises(UserError, match="no pad token"):
        filler_token_id(no_pad, None)


def test_batch_indices_partition_each_global_batch():
    from afa_llm.training.setup import batch_indices

    batch, world = 3, 2
    n = 12  # two global batches per epoch: every global batch is split between the ranks
    for step in range(6):
        slices = [batch_indices(n, 0, step, batch, world, rank) for rank in range(world)]
        assert all(len(s) == batch for s in slices)
        assert not set(slices[0]) & set(slices[1])
        # a pure function of (seed, step): what resume relies on
        assert (batch_indices(n, 0, step, batch, world, 1) == slices[1]).all()
    epoch = [int(i) for step in range(2) for r in range(world) for i in batch_indices(n, 0, step, batch, world, r)]
    assert sorted(epoch) == list(range(n))  # one epoch sees every example once
    # a global batch that straddles an epoch boundary is still full
    assert all(len(batch_indices(10, 0, step, batch, world, 1)) == batch for step in range(7))
