"""Shared helpers for the benchmark scripts: isolated child processes, peak RSS."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def run_child(script: str, *args: str) -> dict:
    """Run ``script --child ...`` in a fresh process (so peak RSS is its own); parse its JSON line."""
    out = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
