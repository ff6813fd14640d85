"""``afa-llm audit (--adapter RUN | --model SPEC [--adapter RUN]) ...``: the shortcut audit
(`afa_llm.evaluation.audit.audit_request`): the words a trained classifier leans on beyond what the zero-shot
base would, as a table of the top K, a JSON report and an HTML page."""

from __future__ import annotations

import argparse

from afa_llm.commands import options
from afa_llm.errors import UserError
from afa_llm.io_utils import check_writable_file, write_json

SCORE_HELP = ("score = effect_model / (the model's median |effect| over the candidates) - max(effect_base, 0) / "
              "(the base's median |effect|), where a candidate's effect is the mean drop in the log-odds of the "
              "class it is skewed toward when every occurrence of it is hidden (at every layer) in up to --sample "
              "texts that hold it; effect_base is the zero-shot base (the adapter off), scored by label words. "
              "Candidates: "
              "word types and collocated word pairs with at least --min-count occurrences; the --max-candidates "
              "with the largest label skew (log-odds with an informative Dirichlet prior, Monroe et al. 2008) "
              "are measured.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + "\n\n" + SCORE_HELP
    options.add_scorer_arguments(parser)
    parser.add_argument("--split", default="train", choices=["train", "validation", "test", "all"],
                        help="which split to audit; a run's own train split is read as the run saw it, with its "
                             "planted cue and train_limit (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="audit only the first N texts of the split")
    parser.add_argument("--top", type=int, default=20, help="candidates in the table and the page (default: %(default)s)")
    parser.add_argument("--min-count", type=int, default=5,
                        help="occurrences a word or pair needs to be a candidate (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=8,
                        help="texts per candidate whose hiding is measured: 2 passes each for the model and the "
                             "base (default: %(default)s)")
    parser.add_argument("--max-candidates", type=int, default=200,
                        help="measure the N candidates with the largest label skew (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="masked passes per forward (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled texts (default: %(default)s)")
    parser.add_argument("--mixed-precision", default="auto", choices=["no", "bf16", "auto"],
                        help="bf16: run the passes under bf16 autocast, as a run's own evaluations do with "
                             "mixed_precision: bf16 (1.9x faster on a CPU with AVX512-BF16; the weights stay in "
                             "--dtype); auto: bf16 where the CPU or GPU has bf16 instructions, else no "
                             "(default: %(default)s)")
    parser.add_argument("--output", default=None, metavar="FILE.json", help="write the full report as JSON")
    parser.add_argument("--html", default=None, metavar="FILE.html",
                        help="write a page of the top words, each with training texts highlighted and both effects")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from afa_llm.evaluation.audit import AuditRequest, audit_request, format_audit
    from afa_llm.reports.audit_page import write_audit_html

    request = AuditRequest(options.resolve(args, require_source=True), split=args.split, limit=args.limit,
                           top=args.top, min_count=args.min_count, sample=args.sample,
                           max_candidates=args.max_candidates, batch_size=args.batch_size, seed=args.seed,
                           mixed_precision=args.mixed_precision, progress=not args.no_progress)
    request.check()
    if args.html and not args.html.lower().endswith((".html", ".htm")):
        raise UserError(f"--html must name an .html file: {args.html}")
    for path, flag in ((args.output, "--output"), (args.html, "--html")):
        if path:
            check_writable_file(path, flag)
    report = audit_request(request)
    spec = request.resolved.scorer
    print(format_audit(report, args.top, f"audit of {spec.model}{' + ' + spec.adapter if spec.adapter else ''} on "
                                         f"{request.resolved.data.data}/{args.split}"))
    if args.output:
        write_json(args.output, report)
    if args.html:
        write_audit_html(report, args.html, args.top)
    return 0
