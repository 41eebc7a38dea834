"""Analysis of finished runs: run directories in, results CSVs, tables and plots out.

For users: README.md, "Analysis", and docs/metrics.md.

    python -m polyjax.analysis collect --runs DIR --out results.csv [--task evaluate]
    python -m polyjax.analysis report --results results.csv [--format markdown]
    python -m polyjax.analysis plot --results results.csv --out fig.png

It reads run directories only (never wandb). `runs` finds, loads and filters
them; `tasks` turns one run (and, for checkpoint tasks, one checkpoint) into
result rows; `results` is the CSV store that several collectors may append to at
once; `report` and `plots` turn the CSV into tables and figures; `members_table`
is a sweep's members, best first, as text.
Only the checkpoint tasks import the model and training code; `members_table`
imports neither JAX nor pandas.
"""

from polyjax.analysis.members import members_table

__all__ = ["members_table"]
