"""Two training processes on the CPU (docs/STACK_NOTES.md, "accelerate on CPU, several processes").

The shipped `accelerate_configs/cpu_2proc.yaml` is launched with ACCELERATE_USE_CPU=1 (and, as the
slow variant, the documented torchrun equivalent). This file is also the launched script: each
rank runs the real `afa-llm train` (`afa_llm.cli.main`) with a few spies patched in, and dumps its adapter and
discriminator weights and the example indices it trained on. The test then checks:

- two processes really ran (results.json says num_processes 2; both ranks dumped): the
  silent failure is a launch that starts ONE process and exits 0;
- the ranks trained on different examples;
- after training, the masker LoRA AND the discriminator are identical on both ranks (the DDP
  trap: a module whose gradients are not all-reduced drifts apart), and both really changed.

The run uses AFA with gradient accumulation (DDP no_sync on the model), the masked-input CE
(a forward with gradient through the unwrapped model) and a mid-run checkpoint (the per-rank
RNG states are gathered).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, ACCUM = 4, 4, 2


# ---- the launched side -----------------------------------------------------------------------
def _worker(out_dir: str, overrides: list[str]) -> int:
    import torch

    import afa_llm.training.setup as setup
    import afa_llm.training.trainer as trainer
    from afa_llm.cli import main

    out = Path(out_dir)
    seen: list[list[int]] = []
    captured: dict = {}

    original_indices = setup.batch_indices

    def batch_indices(*args, **kwargs):
        idx = original_indices(*args, **kwargs)
        seen.append([int(i) for i in idx])
        return idx

    original_build = setup.build_method

    def build_method(*args, **kwargs):
        method = original_build(*args, **kwargs)
        captured["objective"] = method
        if hasattr(method, "disc"):  # AFA
            disc = getattr(method.disc, "module", method.disc)  # after prepare(): DDP-wrapped
            captured["ddp_disc"] = type(method.disc).__name__
            captured["disc_init"] = {k: v.detach().clone() for k, v in disc.state_dict().items()}
        return method

    original_final = trainer.final_results

    def final_results(accelerator, peft_model, *args, **kwargs):
        from peft import get_peft_model_state_dict

        disc = getattr(captured["objective"], "disc", None)
        disc = getattr(disc, "module", disc)
        torch.save({
            "rank": accelerator.process_index,
            "world": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "device": str(accelerator.device),
            "ddp_disc": captured.get("ddp_disc"),
            "adapter": {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()},
            "disc": {k: v.detach().cpu().clone() for k, v in disc.state_dict().items()} if disc else {},
            "disc_init": captured.get("disc_init"),
            "seen": seen,
        }, out / f"rank{accelerator.process_index}.pt")
        return original_final(accelerator, peft_model, *args, **kwargs)

    trainer.batch_indices = batch_indices  # the Trainer's own name for it
    setup.build_method = build_method
    trainer.final_results = final_results
    return main(["train", *overrides])


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], sys.argv[2:]))


# ---- the test side ---------------------------------------------------------------------------
import pytest  # noqa: E402
import torch  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC"))}
    env.update(ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@pytest.fixture(scope="module")
def words_csv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("mp_data") / "words.csv"
    rows = [(f"{p} {w} {s}", y) for p in ("the film was", "i thought it", "overall it is", "the plot was")
            for s in ("today", "for me", "in the end", "really", "to watch") for w, y in (("good", 1), ("bad", 0))]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


def _launch_command(launcher: str, port: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if launcher == "accelerate":
        exe = shutil.which("accelerate", path=str(bin_dir)) or shutil.which("accelerate")
        return [exe, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
                "--main_process_port", str(port)]
    exe = shutil.which("torchrun", path=str(bin_dir)) or shutil.which("torchrun")
    return [exe, "--nproc_per_node", "2", "--master_port", str(port)]


@pytest.mark.parametrize("launcher, quantization", [
    ("accelerate", "none"),
    pytest.param("torchrun", "none", marks=pytest.mark.slow),  # the documented equivalent launch
    pytest.param("accelerate", "nf4", marks=pytest.mark.slow),  # DDP over a bitsandbytes 4-bit base
])
def test_two_cpu_processes_stay_in_sync(launcher, quantization, tiny_model_dir, words_csv, tmp_path):
    run, dumps = tmp_path / "run", tmp_path / "dumps"
    dumps.mkdir()
    overrides = [f"output_dir={run}", f"model={tiny_model_dir}", f"data={words_csv}",
                 f"quantization={quantization}", "method=afa", f"steps={STEPS}", f"batch_size={BATCH}",
                 f"gradient_accumulation_steps={ACCUM}",
                 "max_text_tokens=32", "num_masks=4", "lambda_pg_warmup_steps=0", "learning_rate=5e-3",
                 "masked_ce=focus", "save_every=2", "eval_every=2", "eval_limit=4", "test_limit=4",
                 "focus_eval_limit=4", "evaluate_zero_shot=false", "report_to=none", "progress=false"]
    command = [*_launch_command(launcher, _free_port()), str(Path(__file__)), str(dumps), *overrides]
    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log

    # the silent failure: one process, exit 0
    results = json.loads((run / "results.json").read_text())
    assert results["num_processes"] == 2, log
    assert results["global_batch_size"] == 2 * BATCH * ACCUM
    assert sorted(p.name for p in dumps.iterdir()) == ["rank0.pt", "rank1.pt"], log
    r0, r1 = (torch.load(dumps / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"], r1["world"]) == (0, 1, 2, 2)
    assert r0["device"].startswith("cpu") and "MULTI" in r0["distributed_type"], r0["distributed_type"]
    assert r0["ddp_disc"] == "DistributedDataParallel"  # its gradients are all-reduced

    # each rank trained on its own slice of every global batch
    assert len(r0["seen"]) == len(r1["seen"]) == STEPS * ACCUM
    for a, b in zip(r0["seen"], r1["seen"]):
        assert len(a) == len(b) == BATCH and set(a) != set(b)
    assert not set(r0["seen"][0]) & set(r1["seen"][0])  # within an epoch, disjoint slices

    # identical weights on both ranks, and training really moved them
    for part in ("adapter", "disc"):
        assert r0[part].keys() == r1[part].keys()
        for key in r0[part]:
            assert torch.equal(r0[part][key], r1[part][key]), (part, key)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in r0["adapter"].items())
    assert all(not torch.equal(r0["disc"][k], r0["disc_init"][k]) for k in r0["disc"])
    assert torch.equal(r0["disc_init"]["net.1.weight"], r1["disc_init"]["net.1.weight"])  # same start

    # what rank 0 saved is what both ranks hold
    from safetensors.torch import load_file

    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    for key, value in saved.items():
        assert torch.equal(value, r1["adapter"][key]), key
    from afa_llm.training.checkpoint import load_trainer_state

    state = load_trainer_state(run / "checkpoints" / f"step-{STEPS:06d}")
    assert len(state["rng"]) == 2  # every rank's sampler state, for an exact resume
    assert not torch.equal(state["rng"][0]["sampler"], state["rng"][1]["sampler"])
    for key, value in state["method"]["discriminator"].items():
        assert torch.equal(value, r1["disc"][key]), key
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert all("loss_masked_ce" in m and "loss_pg" in m for m in metrics)


@pytest.mark.slow  # extra two-process variants: attention perturbations, and the heads (a classifier; label words
# of several tokens, whose later tokens take a second forward of the DDP model per step)
@pytest.mark.parametrize("method, extra", [("vat", ()), ("at", ()), ("lora", ("head=classifier",)),
                                           ("lora", ("label_words=[' very bad', ' very good']",))])
def test_two_cpu_processes_stay_in_sync_with_attention_perturbations(method, extra, tiny_model_dir, words_csv,
                                                                     tmp_path):
    run, dumps = tmp_path / "run", tmp_path / "dumps"
    dumps.mkdir()
    overrides = [f"output_dir={run}", f"model={tiny_model_dir}", f"data={words_csv}", "quantization=none", *extra,
                 f"method={method}", *(("adv_eps=1",) if method != "lora" else ()), f"steps={STEPS}", f"batch_size={BATCH}",
                 "max_text_tokens=32", "learning_rate=5e-3", "save_every=2", "eval_every=0", "test_limit=4",
                 "focus_eval_limit=4", "evaluate_zero_shot=false", "report_to=none", "progress=false"]
    command = [*_launch_command("accelerate", _free_port()), str(Path(__file__)), str(dumps), *overrides]
    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert json.loads((run / "results.json").read_text())["num_processes"] == 2, log
    r0, r1 = (torch.load(dumps / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert r0["adapter"].keys() == r1["adapter"].keys()
    for key in r0["adapter"]:
        assert torch.equal(r0["adapter"][key], r1["adapter"][key]), key
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in r0["adapter"].items())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if method != "lora":
        assert all(m["adv_norm"] == pytest.approx(1.0, rel=1e-3) and m["adv_kl"] >= 0 for m in metrics)


@pytest.mark.slow  # an extra two-process variant
def test_two_cpu_processes_stop_early_together(tiny_model_dir, words_csv, tmp_path):
    # a learning rate too small to change a prediction: validation 2 ties validation 1, so
    # patience 1 stops at step 4 on rank 0, and rank 1 must stop there too (it gets rank 0's record)
    run, dumps = tmp_path / "run", tmp_path / "dumps"
    dumps.mkdir()
    overrides = [f"output_dir={run}", f"model={tiny_model_dir}", f"data={words_csv}", "quantization=none",
                 "method=lora", "steps=20", f"batch_size={BATCH}", "max_text_tokens=32", "learning_rate=1e-12",
                 "eval_every=2", "eval_limit=8", "early_stopping_patience=1", "select_best=true", "save_every=2",
                 "test_limit=4", "focus_eval_limit=4", "evaluate_zero_shot=false", "report_to=none",
                 "progress=false"]
    command = [*_launch_command("accelerate", _free_port()), str(Path(__file__)), str(dumps), *overrides]
    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    results = json.loads((run / "results.json").read_text())
    assert results["num_processes"] == 2 and results["stopped_early"], log
    assert (results["best_step"], results["last_step"]) == (2, 4)
    r0, r1 = (torch.load(dumps / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert len(r0["seen"]) == len(r1["seen"]) == 4  # both ranks trained exactly 4 steps
    for key in r0["adapter"]:
        assert torch.equal(r0["adapter"][key], r1["adapter"][key]), key
