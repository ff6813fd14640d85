"""The ACT search's log, ``search.jsonl``: one line per scored candidate (its scores, the setup hash, its
seconds and forwards), so a search resumes where it stopped and reports the whole search's cost; and
the loop that scores candidates into it (`run_search`)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from afa_llm.act.head_search import HeadSearch
from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_write_text

SEARCH_FILE = "search.jsonl"


def setup_hash(setup: dict) -> str:
    return hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:16]


def search_records(path: Path) -> list[dict]:
    """The whole lines of a search.jsonl (a torn line, from an interrupted or ongoing write, is skipped)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the candidate runs again
    return records


def read_search(path: Path, setup: str) -> dict[tuple[int, int], dict]:
    """The finished candidates of a search.jsonl made with the same setup; the log is rewritten without torn lines."""
    if not path.exists():
        return {}
    done = {}
    for record in search_records(path):
        if record.get("setup") != setup:
            raise UserError(f"{path} comes from another search (model, adapter, calibration examples, beta, tau or "
                            "--bf16 differ); use another --output or delete it")
        done[(record["layer"], record["head"])] = record
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done


# ---------------------------------------------------------------------------- the search
def resumed_cost(done: dict) -> dict:
    """What the candidates of an earlier run cost: their count, their logged seconds, and how many
    were logged without a cost (before the log kept it)."""
    if not done:
        return {}
    unlogged = sum("seconds" not in r for r in done.values())
    return {"resumed_candidates": len(done), "resumed_seconds": round(sum(r.get("seconds", 0.0) for r in done.values()), 1),
            **({"resumed_without_cost": unlogged} if unlogged else {})}


def run_search(search: HeadSearch, candidates: list[tuple[int, int]], done: dict, baseline: dict,
               log: Path | None, setup: str, progress: bool = True) -> list[dict]:
    """Score every candidate not in ``done``, appending each result to ``log``; all results in order."""
    from tqdm.auto import tqdm

    results = dict(done)
    best = max(done.values(), key=lambda r: r["accuracy"], default=None)
    todo = [c for c in candidates if c not in done]
    with tqdm(total=len(candidates), initial=len(candidates) - len(todo), desc="ACT search", unit="head",
              disable=not progress, file=sys.stderr) as bar:
        for layer, head in todo:
            start, forwards = time.perf_counter(), search.forwards
            result = search.candidate(layer, head)
            results[(layer, head)] = result
            if log is not None:  # with its cost, so that a resumed search reports the whole search's cost
                cost = {"seconds": round(time.perf_counter() - start, 3), "forwards": search.forwards - forwards}
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({**result, "setup": setup, **cost}) + "\n")
            if best is None or result["accuracy"] > best["accuracy"]:
                best = result
            bar.set_postfix_str(f"baseline {baseline['accuracy']:.4f}, best L{best['layer']}H{best['head']} "
                                f"{best['accuracy']:.4f}")
            bar.update(1)
    return [results[c] for c in candidates]
