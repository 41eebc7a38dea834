"""Bar and strip plots of a results CSV, like the paper's Figures 3 to 5.

One panel per dataset; along x one bar group per method (the setting's varying
config fields, e.g. loss and weighting); within a group one bar per rule
(task:checkpoint, see `report`); bar height the mean over seeds, error bar the
standard deviation, dots the individual runs. The title names the metric and
split, the legend the rules. matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np
import pandas as pd

from polyjax.analysis import report

SUFFIXES = (".png", ".pdf")


def _labels(df: pd.DataFrame, fields: Sequence[str]) -> pd.Series:
  if not fields:
    return pd.Series(["all"] * len(df), index=df.index)
  return df[list(fields)].astype(str).agg("\n".join, axis=1)


def plot(df: pd.DataFrame, out: str | pathlib.Path, *, metric: str = "reweighted_acc",
         split: str = "test", by: Sequence[str] | None = None,
         rules: Sequence[str] | None = None, seed: int = 0) -> pathlib.Path:
  """Writes the figure to `out` (.png or .pdf) and returns its path.

  Args:
    df: the results CSV (`results.read`).
    metric, split: what the bars show.
    by: fields that define a method (default: every config column but the
      seeds and the dataset, keeping those that vary).
    rules: rules (task:checkpoint) to show, in order (default: all present).
    seed: seed of the dots' horizontal jitter.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out = pathlib.Path(out)
  if out.suffix.lower() not in SUFFIXES:
    raise ValueError(f"--out {out}: the plot file must end in {' or '.join(SUFFIXES)}")
  summary = report.summarize(df, metric=metric, split=split, by=by)
  rows = report.metric_rows(df, metric, split)
  fields = [c for c in summary.columns
            if c not in ("rule", "metric", "split", "mean", "std", "n", "data.name")]
  fields, _ = report.split_constant(summary, fields)
  present = sorted(set(summary["rule"]), key=report.rule_rank)
  rules = present if rules is None else [r for r in rules if r in present]
  if not rules:
    raise ValueError(f"none of the rules {present} was asked for")
  datasets = (sorted(summary["data.name"].astype(str).unique())
              if "data.name" in summary.columns else ["all"])

  rng = np.random.default_rng(seed)
  fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.5, 4.4 * len(datasets)), 4.2),
                           squeeze=False)
  width = 0.8 / len(rules)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, dataset in zip(axes[0], datasets):
    s = summary if dataset == "all" else summary[summary["data.name"].astype(str) == dataset]
    r = rows if dataset == "all" else rows[rows["data.name"].astype(str) == dataset]
    s = s.assign(label=_labels(s, fields))
    r = r.assign(label=_labels(r, fields))
    methods = list(dict.fromkeys(s["label"]))
    for j, rule in enumerate(rules):
      sr = s[s["rule"] == rule].set_index("label")
      x = np.arange(len(methods)) + (j - (len(rules) - 1) / 2) * width
      means = [sr["mean"].get(m, np.nan) for m in methods]
      stds = [sr["std"].get(m, np.nan) for m in methods]
      ax.bar(x, means, width * 0.9, yerr=np.nan_to_num(stds), capsize=3,
             color=colors[j % len(colors)], alpha=0.75, label=rule)
      for i, m in enumerate(methods):
        points = r[(r["rule"] == rule) & (r["label"] == m)][metric].to_numpy(float)
        jitter = rng.uniform(-0.25, 0.25, len(points)) * width
        ax.scatter(x[i] + jitter, points, s=10, color="black", zorder=3)
    ax.set_xticks(np.arange(len(methods)), methods, fontsize=8)
    ax.set_title(dataset if dataset != "all" else "")
    ax.set_ylabel(f"{split} {metric}")
    if fields:
      ax.set_xlabel(" / ".join(fields), fontsize=8)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(rules), 3), fontsize=7,
             title="rule (task:checkpoint)", title_fontsize=7, frameon=False)
  fig.suptitle(f"{split} {metric}: mean ± std over seeds (bars), runs (dots)", fontsize=9)
  legend_rows = -(-len(rules) // 3)
  fig.tight_layout(rect=(0, 0.06 + 0.05 * legend_rows, 1, 1))
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=150)
  plt.close(fig)
  return out
