"""Reports built on the evaluator: the leaderboard (a YAML of entries scored on one data set, as
Markdown, CSV and a plot), focus maps (where the answer position looks, as HTML and PNG) and the
audit's page (the words a classifier leans on, highlighted in their texts)."""
