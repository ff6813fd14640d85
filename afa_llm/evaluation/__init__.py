"""Evaluation: the evaluator, metrics, prior correction, confidence reliability, focus metrics, the stress test and
the shortcut audit (its twin: stress tests a named cue, the audit finds one). Reports built on it: `afa_llm.reports`."""
