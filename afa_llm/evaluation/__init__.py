"""Evaluation: the evaluator, metrics, prior correction, reliability, focus metrics, stress test, leaderboard, focus maps."""
