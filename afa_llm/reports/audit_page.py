"""The audit's page (``afa-llm audit --html``): the top candidates, each with a few of the audited texts that
hold it (the candidate highlighted) and its two effects side by side. Inline CSS, no scripts, no external
URLs, every text html-escaped; written atomically."""

from __future__ import annotations

import html
from pathlib import Path

from afa_llm.evaluation.audit_stats import occurrence_spans, text_words
from afa_llm.io_utils import atomic_write_text

STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}mark{background:#fd6}"
         ".num{text-align:right;font-variant-numeric:tabular-nums}")


def highlighted(text: str, word: str) -> str:
    """``text`` html-escaped with every occurrence of ``word`` (one word or a pair) in <mark>."""
    words = [w for w, _, _ in text_words(word)]
    out, at = [], 0
    for start, end in occurrence_spans(text, words):
        out += [html.escape(text[at:start]), f"<mark>{html.escape(text[start:end])}</mark>"]
        at = end
    return "".join(out) + html.escape(text[at:])


def _effect(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def render_audit_html(report: dict, top: int) -> str:
    source = html.escape(report["model"] + (f" + {report['adapter']}" if report.get("adapter") else ""))
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>Shortcut audit</title>',
             f"<style>{STYLE}</style></head><body>", f"<h1>Shortcut audit of {source}</h1>",
             f"<p>{html.escape(str(report['data']))}, split {html.escape(str(report['split']))}: "
             f"{report['scored']['n']} texts; {report['candidates_measured']} of {report['candidates_found']} "
             "candidates measured. <b>effect</b>: the drop in the log-odds of the class the word is skewed toward "
             "when it is hidden (mean over the sampled texts); <b>score</b>: the model's effect over its median "
             "|effect| minus the base's effect over the base's median |effect|.</p>",
             "<table><tr><th>rank</th><th>word</th><th>score</th><th>effect (model)</th><th>effect (base)</th>"
             "<th>skewed toward</th><th>counts</th><th>texts (effect model / base)</th></tr>"]
    for row in report["candidates"][:top]:
        counts = ", ".join(f"{html.escape(k)} {v}" for k, v in row["counts"].items())
        texts = "".join(f"<p>{highlighted(ex['text'], row['word'])} <small>({html.escape(ex['label'])}; "
                        f"{_effect(ex.get('effect_model'))} / {_effect(ex.get('effect_base'))})</small></p>"
                        for ex in row["examples"])
        parts.append(f"<tr><td class=num>{row['rank']}</td><td><b>{html.escape(row['word'])}</b></td>"
                     f"<td class=num>{row['score']:.2f}</td><td class=num>{_effect(row['effect_model'])}</td>"
                     f"<td class=num>{_effect(row['effect_base'])}</td>"
                     f"<td>{html.escape(row['skew']['class'])} (z {row['skew']['z']:.1f})</td><td>{counts}</td>"
                     f"<td>{texts}</td></tr>")
    parts += ["</table>", "</body></html>"]
    return "\n".join(parts)


def write_audit_html(report: dict, path: str | Path, top: int) -> None:
    atomic_write_text(path, render_audit_html(report, top))
