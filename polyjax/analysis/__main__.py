"""Command line: `python -m polyjax.analysis {collect,report,plot} ...`.

    collect --runs DIR [--runs DIR ...] --out results.csv [--task evaluate]
            [--checkpoint last|best] [--split test[,val...]] [--where FIELD=VALUE ...]
            [--status completed[,diverged...]|any] [--min-epochs N]
    report  --results results.csv [--by FIELD,...] [--metric NAME] [--split test]
            [--compare FIELD=A,B] [--format markdown|latex|csv]
    plot    --results results.csv --out FILE.png|FILE.pdf [--metric NAME] [--split test]

Bad arguments exit with status 2 and one line; skipped runs, symbolic links
followed (or not) under --runs, a results CSV read without its cut-off last
line and, for report and plot, each setting with a seed run more than once print
one warning line each on stderr. `collect` ends with one line: runs
collected, rows added, and the runs left out, counted by reason.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from polyjax.analysis import collect, runs, tasks

FORMATS = ("markdown", "latex", "csv")  # report's formats (pandas is imported only to report)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m polyjax.analysis",
                              description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)

  c = sub.add_parser("collect", help="run a task over runs and append rows to a results CSV")
  c.add_argument("--runs", action="append", required=True, metavar="DIR",
                 help="directory to search for run directories (repeatable)")
  c.add_argument("--out", required=True, help="results CSV to create or extend")
  c.add_argument("--task", default="evaluate", choices=list(tasks.TASKS),
                 help="evaluate: every metric (docs/metrics.md) from a checkpoint; margins: margin "
                      "distribution per group; boundary: 2-D linear decision boundary; "
                      "logged: logged metrics at the last/best-validation epoch")
  c.add_argument("--checkpoint", default="last", choices=list(runs.CHECKPOINT_RULES),
                 help="which checkpoint checkpoint tasks load (best: summary.json's best_epoch)")
  c.add_argument("--split", default=None,
                 help="comma-separated splits (default: test; train for margins)")
  c.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE[,VALUE]",
                 help="keep runs whose config field (e.g. loss.name) or status/"
                      "epochs_completed/run_id equals one of the values (repeatable)")
  c.add_argument("--status", default="completed",
                 help="comma-separated run statuses to keep, or 'any' (default: completed)")
  c.add_argument("--min-epochs", type=int, default=0, help="least epochs completed")

  r = sub.add_parser("report", help="tables of mean, std and n over distinct seeds")
  r.add_argument("--results", required=True)
  r.add_argument("--by", default=None,
                 help="comma-separated grouping columns (default: all config fields but seeds)")
  r.add_argument("--metric", default="reweighted_acc")
  r.add_argument("--split", default="test")
  r.add_argument("--compare", default=None, metavar="FIELD=A,B",
                 help="also a paired t-test over seeds of FIELD=B against FIELD=A")
  r.add_argument("--format", default="markdown", choices=FORMATS)

  g = sub.add_parser("plot", help="mean ± std and strip plot (PNG or PDF)")
  g.add_argument("--results", required=True)
  g.add_argument("--out", required=True, help="figure file, .png or .pdf")
  g.add_argument("--metric", default="reweighted_acc")
  g.add_argument("--split", default="test")
  g.add_argument("--by", default=None, help="comma-separated fields that define a method")
  return p


def _split_list(text: str | None) -> list[str] | None:
  return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _warn_line(message, category, filename, lineno, file=None, line=None):
  print(f"polyjax.analysis: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  warnings.showwarning = _warn_line
  try:
    if args.command == "collect":
      statuses = None if args.status == "any" else _split_list(args.status)
      counts = collect.collect(
          args.runs, args.out, task=args.task, checkpoint=args.checkpoint,
          splits=_split_list(args.split), where=[runs.Where.parse(w) for w in args.where],
          statuses=statuses, min_epochs=args.min_epochs)
      print(f"polyjax.analysis: {counts.summary()}; {args.out}")
    elif args.command == "report":
      from polyjax.analysis import report, results
      df = results.read(args.results)
      by = _split_list(args.by)
      summary = report.summarize(df, metric=args.metric, split=args.split, by=by)
      print(report.format_summary(summary, args.format))
      if args.compare:
        field, sep, values = args.compare.partition("=")
        pair = values.split(",")
        if not sep or len(pair) != 2:
          raise ValueError(f"--compare {args.compare!r}: expected FIELD=A,B")
        # The table above warned already about any seed run twice.
        test = report.paired(df, field, pair[0], pair[1], metric=args.metric,
                             split=args.split, by=by, warn=False)
        print()
        print(report.format_paired(test, args.format))
    else:
      from polyjax.analysis import plots, results
      df = results.read(args.results)
      out = plots.plot(df, args.out, metric=args.metric, split=args.split,
                       by=_split_list(args.by))
      print(f"polyjax.analysis: wrote {out}")
  except (ValueError, FileNotFoundError) as e:
    print(f"polyjax.analysis: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
