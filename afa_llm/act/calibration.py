"""ACT: training-free attention-sink calibration (Yu et al., ICML 2024, "Unveiling and Harnessing
Hidden Attention Sinks"). The paper's tables could not be read; the behaviour follows the
authors' released code as described in docs/ACT.md.

For each calibrated (layer, head) and each input, on the head's attention map A (after the
float32 softmax, over the keys each query may see):

    score_j = mean of A[i, j] over the real queries i that can see key j
    S       = {j : score_j > tau} minus its lowest index (the first sink is spared)
    A'[i,j] = beta * A[i,j]                                   for j in S
    A'[i,j] = A[i,j] * (1 + (1 - beta) * a_S(i) / rest(i))    otherwise

with a_S(i) the row's mass on S and rest(i) = 1 - a_S(i), so the removed mass goes to the
other keys in proportion to their weights and every row still sums to 1. A query is real iff it
sees its own key (left or right padding is not). Rows with (almost) no mass off the sinks are
left unchanged instead of 0/0.

The edit is an `AttentionEdit` of the one attention hook (`afa_llm.attention.hook`): only the
calibrated heads are recomputed; every other head stays bit-identical SDPA, and a config with
no heads gives logits bit-identical to the plain model.

Files: ``act.json`` (written by ``afa-llm calibrate``) holds the heads, beta, tau, the rule,
where the calibration examples came from, and a fingerprint of the model and adapter, so that
applying it to another model is refused with one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from afa_llm.attention.hook import AttentionEdit, attention_hook, register, set_module_edits
from afa_llm.attention.decoder_layers import find_decoder_layers, unwrap_model
from afa_llm.errors import UserError
from afa_llm.io_utils import write_json

DEFAULT_BETA = 0.4
DEFAULT_TAU = 0.1
ACT_FILE = "act.json"
FORMAT = "afa-llm-act/1"
DEGENERATE_REST = 1e-6  # off-sink mass below which a row is left as it is (no 0/0)
_CONFIG_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "rope_parameters", "rope_theta",
                "sliding_window", "layer_types", "query_pre_attn_scalar")


# ---------------------------------------------------------------------------------- math
def real_queries(visible: torch.Tensor) -> torch.Tensor:
    """(..., Q) bool from a (..., Q, K) visibility mask: query i sees its own key K - Q + i."""
    q_len, k_len = visible.shape[-2:]
    rows = torch.arange(q_len, device=visible.device)
    return visible[..., rows, rows + (k_len - q_len)]


def sink_scores(probs: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(..., K): the mean weight key j gets from the real queries that can see it (0 if none)."""
    seen = visible & real_queries(visible)[..., :, None]
    total = (probs * seen).sum(-2)
    return total / seen.sum(-2).clamp_min(1)


def find_sinks(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """(..., K) bool: keys scoring above ``tau``, minus the lowest-index one (spared)."""
    sinks = scores > tau
    first = sinks.to(torch.uint8).argmax(-1, keepdim=True)  # argmax gives the first maximum
    return sinks.scatter(-1, first, False)  # an all-False row clears an already-False key


def calibrate_rows(probs: torch.Tensor, sinks: torch.Tensor, real: torch.Tensor, beta: float) -> torch.Tensor:
    """Scale the sink columns of every real row by ``beta`` and give the mass to the other keys.

    ``probs`` (..., Q, K); ``sinks`` (..., K); ``real`` (..., Q). Pad rows and degenerate rows
    (off-sink mass <= `DEGENERATE_REST`) come back unchanged.
    """
    sink = sinks[..., None, :]
    sink_mass = (probs * sink).sum(-1, keepdim=True)
    rest = (probs * ~sink).sum(-1, keepdim=True)
    grow = 1 + (1 - beta) * sink_mass / rest.clamp_min(DEGENERATE_REST)
    edited = torch.where(sink, probs * beta, probs * grow)
    keep = (rest <= DEGENERATE_REST) | ~real[..., None]
    return torch.where(keep, probs, edited)


def act_probs(probs: torch.Tensor, visible: torch.Tensor, beta: float, tau: float) -> torch.Tensor:
    """The whole calibration of (B, h, Q, K) attention weights; ``visible`` broadcasts to them."""
    real = real_queries(visible)
    sinks = find_sinks(sink_scores(probs, visible), tau)
    return calibrate_rows(probs, sinks, real, beta)


@dataclass
class ACTEdit(AttentionEdit):
    """ACT on some heads of one layer: every query row, after the softmax."""

    rows: str = "all"
    keep_unchanged_rows: bool = True  # rows without a sink stay SDPA's, bit for bit (the search skips on it)
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    capture: bool = False  # keep the calibrated answer rows (the focus report shows them)
    last_rows: torch.Tensor | None = None  # (B, h, K) of the last forward, with ``capture``

    def probs(self, probs: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        if probs.shape[-2] == 1 and visible.shape[-1] > 1:  # decoding with a cache: no map to score sinks on
            warnings.warn("ACT is skipped for single-query (cached decoding) forwards", stacklevel=2)
            return probs
        out = act_probs(probs, visible, self.beta, self.tau)
        if self.capture:
            self.last_rows = out[..., -1, :].detach()
        return out


def default_eligible_layers(num_layers: int) -> list[int]:
    """Layers 2..L-2, as the authors (layers 0, 1 and the last are never calibrated)."""
    return list(range(2, num_layers - 1))


# ---------------------------------------------------------------------------- the config
@dataclass
class ACTConfig:
    """What ``act.json`` holds. ``heads``: layer index -> calibrated query heads."""

    heads: dict[int, list[int]]
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    selection: str = "search"  # search | random | all
    rule: str | None = "faithful"
    fingerprint: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # eligible layers, search cost, scores, draw...

    @property
    def n_heads(self) -> int:
        return sum(len(h) for h in self.heads.values())

    def edits(self, capture: bool = False) -> dict[int, ACTEdit]:
        return {layer: ACTEdit(heads=sorted(h), beta=self.beta, tau=self.tau, capture=capture)
                for layer, h in self.heads.items() if h}

    def summary(self, path: str | Path | None = None) -> dict:
        """What an eval report records about the ACT attention calibration."""
        return {"path": str(path) if path else None, "attention_heads": self.n_heads, "layers": len(self.edits()),
                "beta": self.beta, "tau": self.tau, "selection": self.selection, "rule": self.rule,
                "calibration_n": self.calibration.get("n")}


def save_act(path: str | Path, config: ACTConfig) -> None:
    payload = {"format": FORMAT, **asdict(config)}
    payload["heads"] = {str(layer): sorted(h) for layer, h in sorted(config.heads.items())}
    write_json(path, payload)


def load_act(path: str | Path) -> ACTConfig:
    """Read an act.json; a missing or malformed file is a one-line UserError."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"ACT file not found: {path} (write one with afa-llm calibrate)")
    try:
        raw = json.loads(file.read_text())
        if raw.pop("format", None) != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        raw["heads"] = {int(layer): [int(h) for h in heads] for layer, heads in raw["heads"].items()}
        return ACTConfig(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path} is not a valid ACT file: {exc}") from exc


# ----------------------------------------------------------------------- fingerprints
def _sample_bytes(tensor: torch.Tensor, n: int = 64) -> bytes:
    """A strided sample, rounded to bf16: the same weights loaded in fp32 or bf16 hash alike."""
    flat = tensor.detach().reshape(-1)
    k = min(n, flat.numel())  # integer steps: a float linspace over 28M elements rounds past the end
    index = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)
    return flat[index].float().to(torch.bfloat16).float().cpu().numpy().tobytes()


def _base_name(name: str) -> str:
    return name.replace(".base_layer", "").replace("base_model.model.", "")


def weights_hash(model: nn.Module, linear: bool = False) -> str:
    """Hash of the weights that neither quantisation nor LoRA change (embeddings, norms);
    ``linear=True`` also hashes every other float weight (a merged model's identity)."""
    digest = hashlib.sha256()
    for name, param in sorted(unwrap_model(model).named_parameters(), key=lambda t: _base_name(t[0])):
        if "lora_" in name or not param.is_floating_point():
            continue
        if not linear and param.dim() > 1 and "embed" not in name:
            continue
        digest.update(_base_name(name).encode() + _sample_bytes(param))
    return digest.hexdigest()[:20]


def adapter_hash(model: nn.Module) -> str | None:
    """Hash of every LoRA weight in the model (None without an adapter)."""
    lora = sorted((n, p) for n, p in model.named_parameters() if "lora_" in n)
    if not lora:
        return None
    digest = hashlib.sha256()
    for name, param in lora:
        digest.update(_base_name(name).encode() + param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


def model_fingerprint(model: nn.Module) -> dict:
    """Architecture, layer and head counts, a config hash, a weights hash, the adapter's hash and, where it
    is not 1, the scale of its update (`afa_llm.model.adapters.scale_adapter`)."""
    from afa_llm.model.adapters import adapter_scale_of

    base = unwrap_model(model)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    settings = {key: config.to_dict().get(key) for key in _CONFIG_KEYS}
    scale = adapter_scale_of(model)
    return {"architecture": type(base).__name__, "layers": len(find_decoder_layers(model)),
            "heads": config.num_attention_heads,
            "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20],
            "weights_sha256": weights_hash(model), "adapter_sha256": adapter_hash(model),
            **({"adapter_scale": scale} if scale != 1 else {})}


def check_fingerprint(config: ACTConfig, model: nn.Module, where: str = "the ACT file") -> None:
    """Refuse (one line) a calibration made for another model, adapter or merge."""
    want, have = config.fingerprint, model_fingerprint(model)
    for key in ("architecture", "layers", "heads", "config_sha256", "weights_sha256"):
        if want.get(key) != have[key]:
            raise UserError(f"{where} was calibrated for another model ({key}: {want.get(key)} there, "
                            f"{have[key]} here); run afa-llm calibrate for this model")
    if want.get("adapter_sha256") == have["adapter_sha256"]:
        scales = want.get("adapter_scale", 1.0), have.get("adapter_scale", 1.0)
        if scales[0] != scales[1]:
            raise UserError(f"{where} was calibrated for this adapter at adapter_scale {scales[0]}, this model "
                            f"scales it by {scales[1]}; calibrate with --adapter-scale {scales[1]}")
        return
    merged = want.get("merged_weights_sha256")
    if have["adapter_sha256"] is None and merged and merged == weights_hash(model, linear=True):
        return
    if want.get("adapter_sha256") is None:
        raise UserError(f"{where} was calibrated on the base model without an adapter; this model has one "
                        "(calibrate with --adapter)")
    raise UserError(f"{where} was calibrated with another adapter (adapter_sha256 {want.get('adapter_sha256')}, "
                    f"here {have['adapter_sha256']}); calibrate this model, or use the act.json "
                    "that afa-llm merge copied into the merged folder")


def merged_copy(config: ACTConfig, merged_model: nn.Module) -> ACTConfig:
    """The config for a merged model: it keeps the adapter's hash and adds the merged weights' hash."""
    fingerprint = {**config.fingerprint, "merged_weights_sha256": weights_hash(merged_model, linear=True)}
    return ACTConfig(**{**asdict(config), "fingerprint": fingerprint})


# ------------------------------------------------------------------------- applying it
@contextlib.contextmanager
def act_enabled(model: nn.Module, config: ACTConfig | None, where: str = "the ACT file",
                capture: bool = False) -> Iterator[dict[int, ACTEdit]]:
    """Inside the block the model runs with the calibration on (None: unchanged); yields the edits."""
    if config is None:
        yield {}
        return
    check_fingerprint(config, model, where)
    edits = config.edits(capture)
    with attention_hook(model):
        set_module_edits(model, edits)
        try:
            yield edits
        finally:
            set_module_edits(model, None)


def enable_act(model: nn.Module, path: str | Path) -> nn.Module:
    """Switch the calibration in ``path`` on for good (a deployed model): every later forward uses it."""
    config = load_act(path)
    check_fingerprint(config, model, str(path))
    unwrap_model(model).set_attn_implementation(register())
    set_module_edits(model, config.edits())
    return model


def model_card_lines(folder: str) -> list[str]:
    """Model-card text for a merged folder that carries an act.json."""
    return [
        "## ACT (inference-time attention calibration)", "",
        f"`{ACT_FILE}` holds an ACT calibration (Yu et al., ICML 2024): an inference-time edit of the attention",
        "of some heads, not part of the weights. Plain `from_pretrained` loads the model without it. With it on:", "",
        "    model, tokenizer = afa_llm.model.loading.load_model(" + repr(folder) + ")",
        f"    afa_llm.act.calibration.enable_act(model, {str(Path(folder) / ACT_FILE)!r})", "",
        f"or `afa-llm eval --model {folder} --act {Path(folder) / ACT_FILE}`.", "",
    ]
