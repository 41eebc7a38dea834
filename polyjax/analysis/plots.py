"""Strip plots of a results CSV with mean ± std, like the paper's Figures 3 to 5.

One panel per dataset; along x one group per method (the setting's varying config
fields, e.g. loss and weighting); within a group one column per rule
(task:checkpoint, see `report`): a marker at the mean over distinct seeds, an
error bar of one standard deviation, and a dot per seed (`report.distinct_seeds`).
Each panel's y-axis fits its data, padded by `PAD` of its range (`ylim`), rather
than starting at 0, so that 0.88 against 0.95 stays visible; that is why there are
no bars, whose length would then mislead. The y label names the split, the metric
and, when the figure shows one rule, the selection rule; the legend, below the
panels and inside the saved image, names the rules. matplotlib's Agg backend: no
display needed.
"""

from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from polyjax.analysis import report

SUFFIXES = (".png", ".pdf")
DPI = 150
PAD = 0.05  # Of the data range, below and above it.
METRIC_NAMES = {"acc": "accuracy", "reweighted_acc": "reweighted accuracy",
                "worst_group_acc": "worst-group accuracy", "loss": "loss",
                "weighted_loss": "weighted loss"}


def metric_label(metric: str, split: str) -> str:
  """'test reweighted accuracy'; a metric without a name here keeps its own."""
  return f"{split} {METRIC_NAMES.get(metric, metric)}"


def rule_label(rule: str, selected_by: Iterable[str] = ()) -> str:
  """How a figure names a rule: 'early-stopped on val/reweighted_acc, logged'.

  `selected_by`: the rows' `selected_by` values, which name the metric that chose a
  best checkpoint ('best val/reweighted_acc').
  """
  task, _, checkpoint = rule.partition(":")
  if checkpoint == "last":
    what = "last epoch"
  elif checkpoint.startswith("best_"):  # logged:best_val_reweighted_acc
    split, _, name = checkpoint[len("best_"):].partition("_")
    what = f"early-stopped on {split}/{name}"
  elif checkpoint == "best":
    chosen = {s[len("best "):] for s in selected_by
              if s.startswith("best ") and "not recorded" not in s}
    what = (f"early-stopped on {chosen.pop()}" if len(chosen) == 1
            else "early-stopped on each run's best_metric")
  else:
    return rule
  how = {"logged": "logged", "evaluate": "recomputed from the checkpoint"}.get(task, task)
  return f"{what}, {how}"


def ylim(values: Iterable[float]) -> tuple[float, float]:
  """The range of the finite `values`, padded by PAD of it on each side (a single
  value by 0.01, or PAD of its size if that is more)."""
  v = np.asarray([x for x in values if np.isfinite(x)], float)
  if not len(v):
    return 0.0, 1.0
  lo, hi = float(v.min()), float(v.max())
  pad = PAD * (hi - lo) if hi > lo else max(0.01, PAD * abs(hi))
  return lo - pad, hi + pad


def _labels(df: pd.DataFrame, fields: Sequence[str]) -> pd.Series:
  if not fields:
    return pd.Series(["all"] * len(df), index=df.index)
  return df[list(fields)].map(report.value_text).agg("\n".join, axis=1)


def _method_fields(summary: pd.DataFrame, fields: Sequence[str]) -> list[str]:
  """The fields that name the methods: those that vary, blanks aside; all that vary
  if two settings would otherwise get the same name."""
  varying, _ = report.split_constant(summary, fields)
  keys = [c for c in ("data.name", "rule") if c in summary.columns]
  if summary.duplicated(keys + varying).any():
    varying = [c for c in fields if summary[c].astype(str).nunique() > 1]
  return varying


def _panel(ax, summary: pd.DataFrame, rows: pd.DataFrame, fields: Sequence[str],
           rules: Sequence[str], labels: dict[str, str], metric: str, rng) -> None:
  import matplotlib

  summary = summary.assign(label=_labels(summary, fields))
  rows = rows.assign(label=_labels(rows, fields))
  ordered = summary.sort_values(list(fields), kind="stable") if fields else summary
  methods = list(dict.fromkeys(ordered["label"]))  # By the fields that name them.
  width = 0.8 / len(rules)
  palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  shown: list[float] = []
  for j, rule in enumerate(rules):
    sr = summary[summary["rule"] == rule].set_index("label")
    x = np.arange(len(methods)) + (j - (len(rules) - 1) / 2) * width
    means = np.array([sr["mean"].get(m, np.nan) for m in methods], float)
    stds = np.nan_to_num(np.array([sr["std"].get(m, np.nan) for m in methods], float))
    ax.errorbar(x, means, yerr=stds, fmt="o", ms=6, capsize=4, elinewidth=1.5,
                color=palette[j % len(palette)], label=labels[rule], zorder=2)
    shown += [*(means - stds), *(means + stds)]
    for i, m in enumerate(methods):
      points = rows[(rows["rule"] == rule) & (rows["label"] == m)][metric].to_numpy(float)
      jitter = rng.uniform(-0.25, 0.25, len(points)) * width
      ax.scatter(x[i] + jitter, points, s=10, color="black", alpha=0.6, zorder=3,
                 label="runs, one per seed" if i == j == 0 else None)
      shown += list(points)
  ax.set_ylim(*ylim(shown))
  ax.set_xticks(np.arange(len(methods)), methods, fontsize=8)
  ax.set_xlim(-0.5, len(methods) - 0.5)
  if fields:
    ax.set_xlabel(" / ".join(fields), fontsize=8)


def figure(df: pd.DataFrame, *, metric: str = "reweighted_acc", split: str = "test",
           by: Sequence[str] | None = None, rules: Sequence[str] | None = None,
           seed: int = 0):
  """The figure `plot` saves, as a matplotlib Figure (the caller closes it).

  Args: as for `plot`.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if by is not None and "data.name" in df.columns and "data.name" not in by:
    by = [*by, "data.name"]  # One panel per dataset, whatever defines a method.
  rows, by = report.runs_table(df, metric=metric, split=split, by=by)
  summary = report.aggregate(rows, by, metric, split)
  fields = _method_fields(summary, [c for c in by if c != "data.name"])
  present = sorted(set(summary["rule"]), key=report.rule_rank)
  rules = present if rules is None else [r for r in rules if r in present]
  if not rules:
    raise ValueError(f"none of the rules {present} was asked for")
  chosen_by = rows["selected_by"] if "selected_by" in rows else pd.Series("", index=rows.index)
  labels = {r: rule_label(r, chosen_by[rows["rule"] == r].dropna().astype(str)) for r in rules}
  datasets = (sorted(summary["data.name"].astype(str).unique())
              if "data.name" in summary.columns else ["all"])

  rng = np.random.default_rng(seed)
  fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.5, 4.4 * len(datasets)), 4.4),
                           squeeze=False, layout="constrained")
  ylabel = metric_label(metric, split) + (f"\n({labels[rules[0]]})" if len(rules) == 1 else "")
  for ax, dataset in zip(axes[0], datasets):
    if dataset == "all":
      s, r = summary, rows
    else:
      s = summary[summary["data.name"].astype(str) == dataset]
      r = rows[rows["data.name"].astype(str) == dataset]
    _panel(ax, s, r, fields, rules, labels, metric, rng)
    ax.set_title(dataset if dataset != "all" else "", fontsize=9)
  axes[0][0].set_ylabel(ylabel, fontsize=8)  # Each panel keeps its own y ticks.
  handles, names = axes[0][0].get_legend_handles_labels()
  order = sorted(range(len(names)), key=lambda i: names[i] not in labels.values())  # Dots last.
  fig.legend([handles[i] for i in order], [names[i] for i in order], loc="outside lower center",
             ncols=min(len(names), 2), fontsize=7, title="selection rule", title_fontsize=7,
             frameon=False)
  fig.suptitle(f"{metric_label(metric, split)}: mean ± std over seeds, dots: runs",
               fontsize=9)
  return fig


def plot(df: pd.DataFrame, out: str | pathlib.Path, *, metric: str = "reweighted_acc",
         split: str = "test", by: Sequence[str] | None = None,
         rules: Sequence[str] | None = None, seed: int = 0) -> pathlib.Path:
  """Writes the figure to `out` (.png or .pdf) and returns its path.

  Args:
    df: the results CSV (`results.read`).
    out: the figure file.
    metric, split: what the y-axis shows.
    by: fields that define a method (default: every config column but the
      seeds and the dataset, keeping those that vary); the dataset always makes
      the panels.
    rules: rules (task:checkpoint) to show, in order (default: all present).
    seed: seed of the dots' horizontal jitter.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out = pathlib.Path(out)
  if out.suffix.lower() not in SUFFIXES:
    raise ValueError(f"--out {out}: the plot file must end in {' or '.join(SUFFIXES)}")
  fig = figure(df, metric=metric, split=split, by=by, rules=rules, seed=seed)
  out.parent.mkdir(parents=True, exist_ok=True)
  # The saved image holds every artist, the legend below the panels included.
  fig.savefig(out, dpi=DPI, bbox_inches="tight")
  plt.close(fig)
  return out
