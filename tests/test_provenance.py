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
