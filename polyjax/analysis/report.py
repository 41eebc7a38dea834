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
standard deviation (ddof=1; empty for n=1); `n` counts distinct seeds.

A field that a run's loss or weighting mode does not use (`loss.alpha` of a `ce`
run: `LOSS_PARAMS`, `WEIGHTING_PARAMS`) changes nothing in it, so it is blanked
before grouping: such runs form one setting, and captions and tables name a
parameter only for the rows that use it. Seeds are distinct: when several runs of
one setting share a seed (a run repeated, or resumed elsewhere), the seed counts
once, from one run (`pick_rank`), with one `DuplicateSeeds` warning per setting
naming the seeds and the run directories. Only settings with runs get a row.

`paired` compares two values of one field (two methods) seed by seed with
`scipy.stats.ttest_rel`.
"""

from __future__ import annotations

import math
import os
import pathlib
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from polyjax import run_dir
from polyjax.analysis import results
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
# The fields each loss (polyjax/losses.py, LOSSES: its builder's parameters) and each
# weighting mode (polyjax/weighting.py, polyjax/data: importance weights, DRO step)
# reads; a run's other loss.* and weighting.* values change nothing in it.
LOSS_PARAMS = {
    "ce": (), "poly": ("loss.alpha", "loss.beta", "loss.kind"), "focal": ("loss.focal_gamma",),
    "ldam": ("loss.max_margin", "loss.inv_temperature"), "la": ("loss.tau",),
    "vs": ("loss.tau", "loss.gamma"), "cdt": ("loss.gamma",), "vs_group": ("loss.gamma",),
}
WEIGHTING_PARAMS = {
    "none": (), "undersampled": ("weighting.exponent",),
    "reweighted": ("weighting.exponent", "weighting.cb_beta", "weighting.drw_epoch",
                   "weighting.anneal", "weighting.anneal_sigmoid_c"),
    "resampled": ("weighting.exponent", "weighting.resample_once"),
    "dro": ("weighting.adv_probs_lr", "weighting.generalization_adjustment"),
    "cvar": ("weighting.cvar_alpha",),
}
# Field that chooses -> {its value: the fields that value reads}.
PARAMS_OF = {"loss.name": LOSS_PARAMS, "weighting.mode": WEIGHTING_PARAMS}


class DuplicateSeeds(UserWarning):
  """Several runs of one setting with the same seed; the message names them and the
  run each seed is counted from."""


def config_columns(df: pd.DataFrame) -> list[str]:
  """Columns of the CSV that are config fields (dotted names or top-level fields)."""
  return [c for c in df.columns if c not in results.IDENTITY
          and ("." in c or c in _CONFIG_FIELDS)]


def default_by(df: pd.DataFrame) -> list[str]:
  return [c for c in config_columns(df) if c not in SEED_FIELDS]


def seed_columns(df: pd.DataFrame) -> list[str]:
  return [c for c in SEED_FIELDS if c in df.columns]


def params(selector: str) -> set[str]:
  """Every field that some value of `selector` ('loss.name') reads."""
  return {f for fields in PARAMS_OF[selector].values() for f in fields}


def users(field: str) -> tuple[str, set[str]] | None:
  """('loss.name', {'poly'}) for 'loss.alpha': what chooses whether a run reads `field`,
  and the values that do; None for a field every run reads."""
  for selector, table in PARAMS_OF.items():
    if field in params(selector):
      return selector, {v for v, fields in table.items() if field in fields}
  return None


def blank_unused(df: pd.DataFrame) -> pd.DataFrame:
  """`df` with NaN in each loss and weighting field its row's loss or mode does not read
  (a value of the selector this analysis does not know keeps all its fields)."""
  df = df.copy()
  for selector, table in PARAMS_OF.items():
    if selector not in df.columns:
      continue
    chosen = df[selector].astype(str)
    for field in sorted(params(selector) & set(df.columns)):
      unused = chosen.isin(table) & ~chosen.isin(users(field)[1])
      if unused.any():
        numeric = pd.api.types.is_numeric_dtype(df[field])
        df[field] = df[field].astype(float if numeric else object)
        df.loc[unused, field] = np.nan
  return df


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
  """Rows of `split` that have `metric`, with their rule (task:checkpoint) in `rule`
  and the fields their loss and weighting do not read blanked (`blank_unused`)."""
  if metric not in df.columns:
    numeric = [c for c in df.columns if c not in results.IDENTITY and c not in
               config_columns(df)]
    raise ValueError(f"--metric {metric!r} is not a column of the results; "
                     f"metrics there: {', '.join(numeric)}")
  df = df[(df["split"].astype(str) == split) & df[metric].notna()].copy()
  if df.empty:
    raise ValueError(f"no results for --metric {metric} on --split {split}")
  df["rule"] = _rule(df)
  return blank_unused(df)


# ---------------------------------------------------------------------------
# Distinct seeds.

def _finished(run: str) -> float:
  """When the run last wrote its summary.json (-inf if the directory is not here)."""
  try:
    return os.stat(pathlib.Path(run) / run_dir.SUMMARY).st_mtime
  except (OSError, ValueError):
    return -math.inf


def pick_rank(rows: pd.DataFrame) -> pd.DataFrame:
  """Columns ranking the runs of a seed, best first when sorted descending: completed,
  then the most epochs, then the latest summary.json (its modification time, if the
  run directory is here), then the later row of the CSV."""
  status = rows["status"] if "status" in rows else pd.Series("", index=rows.index)
  epochs = rows["epochs_completed"] if "epochs_completed" in rows else pd.Series(
      0, index=rows.index)
  finished = {r: _finished(r) for r in rows["run"].astype(str).unique()}
  return pd.DataFrame({
      "_completed": (status.astype(str) == "completed").astype(int),
      "_epochs": pd.to_numeric(epochs, errors="coerce").fillna(-1),
      "_finished": rows["run"].astype(str).map(finished).astype(float),
      "_order": np.arange(len(rows))}, index=rows.index)


def _describe(key: tuple, cols: Sequence[str]) -> str:
  return ", ".join(f"{c}={value_text(v)}" for c, v in zip(cols, key) if not _missing(v))


def _run_note(row: pd.Series) -> str:
  epochs = row.get("epochs_completed")
  epochs = "epochs unknown" if _missing(epochs) else (
      f"{epochs} epoch" + ("" if epochs == 1 else "s"))
  return f"{row['run']} ({row.get('status', 'status unknown')}, {epochs})"


def distinct_seeds(rows: pd.DataFrame, by: Sequence[str], *, warn: bool = True,
                   named_by: Sequence[str] | None = None) -> pd.DataFrame:
  """`rows` (`metric_rows`) with one run per setting (`by`), seed and rule.

  The run kept is the first by `pick_rank`; where it has no row for a rule, the next
  one that has. With `warn`, one `DuplicateSeeds` warning per setting that had a
  seed twice names the setting (by its fields in `named_by`; default: those of `by`
  that vary over `rows`), the seeds, the run kept and the runs left out. Rows
  without a seed column are returned as they are.
  """
  seeds = seed_columns(rows)
  unique = list(by) + ["rule"] + seeds
  if not seeds or not rows.duplicated(unique).any():
    return rows
  ranked = pd.concat([rows, pick_rank(rows)], axis=1).sort_values(
      ["_completed", "_epochs", "_finished", "_order"], ascending=False, kind="stable")
  if warn:
    named_by = split_constant(ranked, by)[0] if named_by is None else list(named_by)
    _warn_duplicates(ranked, list(by), seeds, named_by)
  kept = ranked.drop_duplicates(unique, keep="first")
  return kept.drop(columns=["_completed", "_epochs", "_finished", "_order"]).sort_index()


def _warn_duplicates(ranked: pd.DataFrame, by: list[str], seeds: list[str],
                     named_by: list[str]) -> None:
  per_seed = ranked.drop_duplicates("run").groupby(by + seeds, dropna=False, sort=True)
  notes: dict[str, list[str]] = {}
  for key, g in per_seed:
    if len(g) < 2:
      continue
    key = key if isinstance(key, tuple) else (key,)
    setting, seed = key[:len(by)], key[len(by):]
    first, *rest = (row for _, row in g.iterrows())
    name = _describe(tuple(v for c, v in zip(by, setting) if c in named_by),
                     [c for c in by if c in named_by])
    notes.setdefault(name, []).append(
        f"{_describe(seed, seeds)} kept {_run_note(first)}, left out "
        + ", ".join(_run_note(r) for r in rest))
  for name, seed_notes in notes.items():  # Keyed by text: NaN keys are never equal.
    warnings.warn(
        f"{name or 'all runs'}: {len(seed_notes)} "
        f"{'seed has' if len(seed_notes) == 1 else 'seeds have'} several runs, each "
        "counted once (from the completed run with the most epochs, then the latest): "
        + "; ".join(seed_notes), DuplicateSeeds, stacklevel=3)


def runs_table(df: pd.DataFrame, *, metric: str = "reweighted_acc", split: str = "test",
               by: Sequence[str] | None = None, warn: bool = True
               ) -> tuple[pd.DataFrame, list[str]]:
  """The rows a summary counts, one per setting, rule and distinct seed, and the
  grouping columns (`by`, or every config column but the seeds)."""
  df = metric_rows(df, metric, split)
  by = list(default_by(df) if by is None else by)
  unknown = [c for c in by if c not in df.columns]
  if unknown:
    raise ValueError(f"--by {unknown[0]!r} is not a column of the results")
  return distinct_seeds(df, by, warn=warn), by


def summarize(df: pd.DataFrame, *, metric: str = "reweighted_acc", split: str = "test",
              by: Sequence[str] | None = None, warn: bool = True) -> pd.DataFrame:
  """Long table: the `by` columns, then rule, metric, split, mean, std, n.

  Args:
    df: the results CSV (`results.read`).
    metric: a metric column (a name of docs/metrics.md).
    split: the split the metric was computed on.
    by: grouping columns (default: every config column but the seeds).
    warn: warn about seeds with several runs (`distinct_seeds`).
  """
  rows, by = runs_table(df, metric=metric, split=split, by=by, warn=warn)
  return aggregate(rows, by, metric, split)


def aggregate(rows: pd.DataFrame, by: Sequence[str], metric: str, split: str
              ) -> pd.DataFrame:
  """Mean, std and n of `metric` over `runs_table` rows, per setting and rule."""
  keys = list(by) + ["rule"]
  grouped = rows.groupby(keys, dropna=False, sort=True)[metric]
  out = grouped.agg(mean="mean", std="std", n="count").reset_index()
  out.insert(len(keys), "metric", metric)
  out.insert(len(keys) + 1, "split", split)
  return out


def paired(df: pd.DataFrame, field: str, a: str, b: str, *, metric: str = "reweighted_acc",
           split: str = "test", by: Sequence[str] | None = None,
           warn: bool = True) -> pd.DataFrame:
  """Paired t-test of `field == b` against `field == a` over seed-matched runs.

  Runs are matched on the seed within each group of `by` (minus `field`) and
  rule, each seed once per side (`distinct_seeds`). A field that one side's runs
  never read (`loss.alpha` of ce against poly) keys the groups, not the pairs.
  Returns one row per group and rule: mean of a and b, mean difference b - a, t
  statistic, two-sided p value and the number of pairs.
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
  named_by = split_constant(df, by)[0] + [field]
  side_a = distinct_seeds(side_a, by + [field], warn=warn, named_by=named_by)
  side_b = distinct_seeds(side_b, by + [field], warn=warn, named_by=named_by)
  one_sided = [c for c in by if side_a[c].isna().all() or side_b[c].isna().all()]
  pair_on = [k for k in keys if k not in one_sided] + seed_columns(df)
  merged = side_a.merge(side_b, on=pair_on, suffixes=("_a", "_b"))
  for c in one_sided:
    merged[c] = merged[f"{c}_b"].combine_first(merged[f"{c}_a"])
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

def _missing(value) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value))


def value_text(value) -> str:
  """A key value as tables show it; '-' for a field the row's run does not read."""
  return "-" if _missing(value) else str(value)


def split_constant(df: pd.DataFrame, cols: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """Splits grouping columns into varying ones and {column: value} of constant ones.

  Blanks of `blank_unused` (a field the row's loss or mode does not read) are not
  values: a field read with one value wherever it is read is constant, and one read
  by no row is constant with value None.
  """
  varying, constant = [], {}
  for c in cols:
    column = df[c].dropna() if users(c) else df[c]
    values = column.astype(str).unique()
    if len(values) <= 1:
      constant[c] = values[0] if len(values) else None
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
  """One row per setting that has results, one column per rule, cells 'mean ± std (n=N)'."""
  keys = [c for c in summary.columns
          if c not in ("rule", "metric", "split", "mean", "std", "n")]
  varying, constant = split_constant(summary, keys)
  s = summary.copy()
  s["cell"] = [_cell(m, sd, n, latex) for m, sd, n in zip(s["mean"], s["std"], s["n"])]
  index = varying or ["metric"]
  rules = sorted(set(s["rule"]), key=rule_rank)
  # Settings as they occur: a pivot would add a row for every combination of the keys.
  rows = []
  for key, g in s.groupby(index, dropna=False, sort=True):
    cells = dict(zip(g["rule"], g["cell"]))
    rows.append([value_text(v) for v in (key if isinstance(key, tuple) else (key,))] +
                [cells.get(r, "") for r in rules])
  return pd.DataFrame(rows, columns=index + rules), constant


def _readers(summary: pd.DataFrame, field: str) -> str | None:
  """Which rows read `field`, as a caption says it: None for all of them."""
  read_by = users(field)
  if read_by is None or summary[field].notna().all():
    return None
  selector = read_by[0]
  if selector not in summary.columns:
    return "where read"
  values = sorted(set(summary.loc[summary[field].notna(), selector].astype(str)))
  return f"{selector}={','.join(values)} rows"


def _caption(summary: pd.DataFrame, constant: dict[str, str | None]) -> str:
  metric, split = summary["metric"].iloc[0], summary["split"].iloc[0]
  text = (f"{split} {metric}: mean ± std (ddof=1) over seeds, n = distinct seeds. Columns "
          "are rules task:checkpoint (evaluate:last/best = recomputed from the last/best "
          "checkpoint; logged:RULE = logged at the epoch RULE selects).")
  # A loss or weighting parameter only for the rows whose loss or mode reads it.
  parts: dict[str, list[str]] = {"All rows": []}
  for k, v in constant.items():
    if k.startswith(_CAPTION_FIELDS) and v is not None:
      parts.setdefault(_readers(summary, k) or "All rows", []).append(f"{k}={v}")
  shown = [f"{rows}: {', '.join(fields)}" for rows, fields in parts.items() if fields]
  if shown:
    text += " " + "; ".join(shown) + "."
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
