"""afa_llm.provenance: each result says which machine and versions produced it."""

import torch
import transformers

from afa_llm import provenance


def test_machine_record_names_the_cpu_threads_and_versions():
    record = provenance.machine_record()
    assert isinstance(record["cpu"], str) and record["cpu"]
    assert record["torch_threads"] == torch.get_num_threads()
    assert (record["torch"], record["transformers"]) == (torch.__version__, transformers.__version__)
    assert record["gpu"] is None or isinstance(record["gpu"], str)


def test_cpu_name_falls_back_without_proc(monkeypatch):
    def unreadable(self):
        raise OSError("no /proc here")

    monkeypatch.setattr(provenance.Path, "read_text", unreadable)
    monkeypatch.setattr(provenance.platform, "processor", lambda: "arm")
    assert provenance.cpu_name() == "arm"


def test_machine_record_says_whether_the_cpu_has_bf16_instructions():
    record = provenance.machine_record()
    assert record["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
    assert record["cpu_bf16"] in (True, False, None)


def test_cpu_bf16_native_reads_the_features_of_each_architecture():
    amd_avx2 = {"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False}
    assert provenance.cpu_bf16_native(amd_avx2) is False
    assert provenance.cpu_bf16_native({**amd_avx2, "avx512_bf16": True}) is True
    assert provenance.cpu_bf16_native({**amd_avx2, "amx_bf16": True}) is True
    assert provenance.cpu_bf16_native({"architecture": "aarch64", "sve_bf16": True}) is True
    assert provenance.cpu_bf16_native({"architecture": "aarch64"}) is False
    assert provenance.cpu_bf16_native({"architecture": "ppc64le"}) is None


def test_emulated_bf16_is_warned_only_for_bf16_on_a_cpu_known_to_lack_it():
    message = provenance.emulated_bf16_warning(True, "cpu", native=False)
    assert message.startswith("warning: bf16 on a CPU without bf16 instructions") and "\n" not in message
    assert provenance.emulated_bf16_warning(False, "cpu", native=False) is None  # fp32 asked for
    assert provenance.emulated_bf16_warning(True, "cpu", native=True) is None
    assert provenance.emulated_bf16_warning(True, "cpu", native=None) is None  # unknown: say nothing
    assert provenance.emulated_bf16_warning(True, "cuda", native=False) is None  # GPUs: not this check


def test_warn_if_emulated_bf16_prints_one_line_to_stderr(monkeypatch, capsys):
    monkeypatch.setattr(provenance, "cpu_bf16_native", lambda capabilities=None: False)
    provenance.warn_if_emulated_bf16(True, "cpu")
    provenance.warn_if_emulated_bf16(False, "cpu")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "mixed_precision: no" in captured.err


def test_scoring_in_bf16_warns_with_the_flag_that_turns_it_off(monkeypatch, capsys, tiny_model_dir):
    from afa_llm.model.adapters import load_scorer
    from afa_llm.specs import ScorerSpec

    monkeypatch.setattr(provenance, "cpu_bf16_native", lambda capabilities=None: False)
    load_scorer(ScorerSpec(model=tiny_model_dir, dtype="bf16"), ["negative", "positive"], progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "emulated" in err and "use --dtype fp32" in err
    load_scorer(ScorerSpec(model=tiny_model_dir), ["negative", "positive"], progress=False)  # fp32: nothing to say
    assert capsys.readouterr().err == ""
