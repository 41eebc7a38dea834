"""Tables from a results CSV: mean, std and n over seeds, rules side by side.

The rules and the metrics are those of docs/metrics.md, "Model selection".

Rows are grouped by every config column of the CSV except the seeds (so each group
is one setting: dataset, model, loss and its parameters, weighting and exponent,
lr, ...), or by the columns given in `by`. Within a group, each *rule* is one
column: the task and checkpoint the number came from,

    evaluate:last   recomputed from the run's last checkpoint
    evaluate:best   recomputed from the best checkpoint the run kept
    logged:last, logged:best_val_reweighted_acc, logged:best_val_worst_group_acc
                    the metrics the run logged at the epoch the rule selects

so model-selection rules (docs/metrics.md: last epoch vs early stopping on validation
reweighted or worst-group accuracy) sit side by side. `std` is the sample
standard deviation (ddof=1; empty for n=1); `n` counts runs (seeds).

`paired` compares two values of one field (two methods) seed by seed with
`scipy.stats.ttest_rel`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from polyjax.analysis import results, runs
from polyjax.config import base_config, flatten

SEED_FIELDS = ("seed", "data.order_seed")
# Rules in the order tables show them; others follow alphabetically.
RULE_ORDER = ("evaluate:last", "evaluate:best", "logged:last", "logged:best_val_reweighted_acc",
              "logged:best_val_worst_group_acc")
# Constant fields a caption names (the rest stay in the CSV).
_CAPTION_FIELDS = ("data.name", "data.imb_factor", "model.name", "loss.", "weighting.", "lr",
                   "batch_size", "num_epochs", "momentum", "weight_decay")
FORMATS = ("markdown", "latex", "csv")
_CONFIG_FIELDS = frozenset(flatten(base_config()))


def config_columns(df: pd.DataFrame) -> list[str]:
  """Columns of the CSV that are config fields (dotted names or top-level fields)."""
  return [c for c in df.columns if c not in results.IDENTITY
          and ("." in c or c in _CONFIG_FIELDS)]


def default_by(df: pd.DataFrame) -> list[str]:
  return [c for c in config_columns(df) if c not in SEED_FIELDS]


def _rule(df: pd.DataFrame) -> pd.Series:
  return df["task"].astype(str) + ":" + df["checkpoint"].astype(str)


def _eq(series: pd.Series, text: str) -> pd.Series:
  try:
    value = float(text)
  except ValueError:
    return series.astype(str) == text
  numeric = pd.to_numeric(series, errors="coerce")
  return pd.Series(np.isclose(numeric, value), index=series.index) & numeric.notna()


def metric_rows(df: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
  """Rows of `split` that have `metric`, with their rule (task:checkpoint) in `rule`."""
  if metric not in df.columns:
    numeric = [c for c in df.columns if c not in results.IDENTITY and c not in
               config_columns(df)]
    raise ValueError(f"--metric {metric!r} is not a column of the results; "
                     f"metrics there: {', '.join(numeric)}")
  df = df[(df["split"].astype(str) == split) & df[metric].notna()].copy()
  if df.empty:
    raise ValueError(f"no results for --metric {metric} on --split {split}")
  df["rule"] = _rule(df)
  return df


def summarize(df: pd.DataFrame, *, metric: str = "reweighted_acc", split: str = "test",
              by: Sequence[str] | None = None) -> pd.DataFrame:
  """Long table: the `by` columns, then rule, metric, split, mean, std, n.

  Args:
    df: the results CSV (`results.read`).
    metric: a metric column (a name of docs/metrics.md).
    split: the split the metric was computed on.
    by: grouping columns (default: every config column but the seeds).
  """
  df = metric_rows(df, metric, split)
  by = list(default_by(df) if by is None else by)
  unknown = [c for c in by if c not in df.columns]
  if unknown:
    raise ValueError(f"--by {unknown[0]!r} is not a column of the results")
  keys = by + ["rule"]
  grouped = df.groupby(keys, dropna=False, sort=True)[metric]
  out = grouped.agg(mean="mean", std="std", n="count").reset_index()
  out.insert(len(keys), "metric", metric)
  out.insert(len(keys) + 1, "split", split)
  return out


def paired(df: pd.DataFrame, field: str, a: str, b: str, *, metric: str = "reweighted_acc",
           split: str = "test", by: Sequence[str] | None = None) -> pd.DataFrame:
  """Paired t-test of `field == b` against `field == a` over seed-matched runs.

  Runs are matched on the seed within each group of `by` (minus `field`) and
  rule. Returns one row per group and rule: mean of a and b, mean difference
  b - a, t statistic, two-sided p value and the number of pairs.
  """
  from scipy import stats

  df = metric_rows(df, metric, split)
  if field not in df.columns:
    raise ValueError(f"--compare {field!r} is not a column of the results")
  by = [c for c in (default_by(df) if by is None else by) if c != field]
  keys = by + ["rule"]
  side_a, side_b = df[_eq(df[field], a)], df[_eq(df[field], b)]
  for side, value in ((side_a, a), (side_b, b)):
    if side.empty:
      raise ValueError(f"--compare {field}={value}: no results with that value")
  pair_on = keys + [s for s in SEED_FIELDS if s in df.columns]
  merged = side_a.merge(side_b, on=pair_on, suffixes=("_a", "_b"))
  rows = []
  for group, g in merged.groupby(keys, dropna=False, sort=True):
    xa, xb = g[f"{metric}_a"].to_numpy(float), g[f"{metric}_b"].to_numpy(float)
    t, p = _paired_t(xb - xa, stats)
    rows.append({**dict(zip(keys, group if isinstance(group, tuple) else (group,))),
                 "metric": metric, "split": split, "compare": field, "a": a, "b": b,
                 "mean_a": xa.mean(), "mean_b": xb.mean(), "mean_diff": (xb - xa).mean(),
                 "t": t, "p": p, "n_pairs": len(g)})
  if not rows:
    raise ValueError(f"--compare {field}={a},{b}: no seed-matched pairs")
  return pd.DataFrame(rows)


def _paired_t(diff: np.ndarray, stats) -> tuple[float, float]:
  """t and two-sided p of a paired t-test on differences `diff`.

  One pair: undefined (NaN). Equal differences (metrics are ratios of counts, so
  this happens): rounding noise would give an arbitrary huge t, so the limit is
  returned instead: t = +-inf, p = 0, or NaN when every difference is 0.
  """
  if len(diff) < 2:
    return math.nan, math.nan
  mean = float(diff.mean())
  if np.allclose(diff, mean, rtol=0, atol=1e-12):
    return (math.nan, math.nan) if abs(mean) <= 1e-12 else (math.copysign(math.inf, mean), 0.0)
  t, p = stats.ttest_rel(diff, np.zeros_like(diff))
  return float(t), float(p)


# ---------------------------------------------------------------------------
# Formatting.

def split_constant(df: pd.DataFrame, cols: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """Splits grouping columns into varying ones and {column: value} of constant ones."""
  varying, constant = [], {}
  for c in cols:
    values = df[c].astype(str).unique()
    if len(values) == 1:
      constant[c] = values[0]
    else:
      varying.append(c)
  return varying, constant


def rule_rank(rule: str) -> tuple[int, str]:
  return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), rule)


def _cell(mean: float, std: float, n: int, latex: bool) -> str:
  pm = r"$\pm$" if latex else "±"
  std_text = "-" if pd.isna(std) else f"{std:.4f}"
  return f"{mean:.4f} {pm} {std_text} (n={int(n)})"


def wide(summary: pd.DataFrame, *, latex: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
  """One row per setting, one column per rule, cells 'mean ± std (n=N)'."""
  keys = [c for c in summary.columns
          if c not in ("rule", "metric", "split", "mean", "std", "n")]
  varying, constant = split_constant(summary, keys)
  s = summary.copy()
  s["cell"] = [_cell(m, sd, n, latex) for m, sd, n in zip(s["mean"], s["std"], s["n"])]
  index = varying or ["metric"]
  table = s.pivot_table(index=index, columns="rule", values="cell", aggfunc="first",
                        dropna=False, sort=True).reset_index()
  table.columns.name = None
  rules = sorted(set(s["rule"]), key=rule_rank)
  table = table[index + rules].fillna("")
  return table, constant


def _caption(summary: pd.DataFrame, constant: dict[str, str]) -> str:
  metric, split = summary["metric"].iloc[0], summary["split"].iloc[0]
  text = (f"{split} {metric}: mean ± std (ddof=1) over seeds, n = runs. Columns are "
          "rules task:checkpoint (evaluate:last/best = recomputed from the last/best "
          "checkpoint; logged:RULE = logged at the epoch RULE selects).")
  shown = {k: v for k, v in constant.items() if k.startswith(_CAPTION_FIELDS)}
  if shown:
    text += " All rows: " + ", ".join(f"{k}={v}" for k, v in shown.items()) + "."
  return text


def _markdown(table: pd.DataFrame) -> str:
  cols = [str(c) for c in table.columns]
  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  for row in table.itertuples(index=False):
    lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
  return "\n".join(lines)


def _tex(text: str) -> str:
  # Cells hold names and numbers (and our own $\pm$): only these need escaping.
  for a in ("_", "%", "&", "#"):
    text = text.replace(a, "\\" + a)
  return text


def _latex(table: pd.DataFrame, caption: str) -> str:
  cols = [str(c) for c in table.columns]
  lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(cols) + "}",
           r"\toprule", " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
  for row in table.itertuples(index=False):
    lines.append(" & ".join(_tex(str(v)) for v in row) + r" \\")
  lines += [r"\bottomrule", r"\end{tabular}",
            r"\caption{" + _tex(caption.replace("±", r"$\pm$")) + "}", r"\end{table}"]
  return "\n".join(lines)


def format_summary(summary: pd.DataFrame, fmt: str) -> str:
  """The summary as a markdown or LaTeX table with its caption, or as long CSV."""
  if fmt == "csv":
    return summary.to_csv(index=False)
  if fmt not in FORMATS:
    raise ValueError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
  table, constant = wide(summary, latex=fmt == "latex")
  caption = _caption(summary, constant)
  if fmt == "latex":
    return _latex(table, caption)
  return caption + "\n\n" + _markdown(table)


def format_paired(test: pd.DataFrame, fmt: str) -> str:
  if fmt == "csv":
    return test.to_csv(index=False)
  keys = [c for c in test.columns if c not in ("metric", "split", "compare", "a", "b",
                                                "mean_a", "mean_b", "mean_diff", "t", "p",
                                                "n_pairs")]
  varying, _ = split_constant(test, [k for k in keys if k != "rule"])
  t = test[varying + ["rule", "mean_a", "mean_b", "mean_diff", "t", "p", "n_pairs"]].copy()
  for c in ("mean_a", "mean_b", "mean_diff", "t"):
    t[c] = t[c].map(lambda v: f"{v:.4f}")
  t["p"] = t["p"].map(lambda v: f"{v:.3g}")
  r = test.iloc[0]
  caption = (f"Paired t-test over seeds (scipy.stats.ttest_rel) of {r['split']} "
             f"{r['metric']}: a = {r['compare']}={r['a']}, b = {r['compare']}={r['b']}, "
             "mean_diff = b - a.")
  if fmt == "latex":
    return _latex(t, caption)
  return caption + "\n\n" + _markdown(t)
