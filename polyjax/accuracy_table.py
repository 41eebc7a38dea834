"""A study report's accuracy table: the three averages of a split's accuracy side
by side, for every cell at its selected (lr, batch size) (`study_report.write_report`).

- `acc`, average accuracy: correct test examples over all test examples
  (SubpopBench's "average accuracy").
- `reweighted_acc`: the mean of the accuracies of the groups present in the split,
  each group weighing the same (SubpopBench's "adjusted accuracy"; on a balanced
  test split, the paper's "test accuracy").
- `worst_group_acc`: the lowest accuracy of a group present (SubpopBench's
  "worst-group accuracy"). A group absent from the split counts in neither.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRICS = (("acc", "average acc"), ("reweighted_acc", "reweighted acc"),
           ("worst_group_acc", "worst-group acc"))
SPLIT = "test"


def _text(v: np.ndarray) -> str:
  if not len(v):
    return "no completed runs"
  std = f"{v.std(ddof=1):.3f}" if len(v) > 1 else "-"
  return f"{v.mean():.3f} ± {std} ({len(v)})"


def rows(study, df, selections: dict[str, dict]) -> list[dict[str, Any]]:
  """Per cell and rule ('last', then `study.es_rule`): mean, std (ddof=1) and n over
  the stage-2 seeds of each of METRICS on the test split, at the cell's selected
  (lr, batch size); NaN where a metric is missing."""
  out = []
  for cell in study.cells:
    choice = selections.get(cell.name, {}).get("selected")
    for rule in ("last", study.es_rule):
      entry = {"cell": cell.name, "row": cell.row, "column": cell.column, "rule": rule}
      sel = df.iloc[0:0] if not choice or df.empty else df[
          (df["cell"] == cell.name) & (df["batch_size"] == int(choice["batch_size"]))
          & (df["rule"] == rule) & (df["split"].astype(str) == SPLIT)]
      for metric, _ in METRICS:
        v = (sel[metric].to_numpy(np.float64) if metric in sel.columns
             else np.zeros(0))
        v = v[~np.isnan(v)]
        entry[metric] = v
        entry[f"{metric}_mean"] = float(v.mean()) if len(v) else math.nan
      out.append(entry)
  return out


def section(study, df, selections: dict[str, dict]) -> list[tuple[str, str, list, list]]:
  """The report's accuracy table, as study_report's (title, caption, header, rows)."""
  caption = (f"{SPLIT} accuracies of each cell at its selected (lr, batch size): mean ± std "
             "(ddof=1) over the stage-2 seeds (n). average acc (`acc`): correct examples "
             "over all examples, SubpopBench's average accuracy; reweighted acc "
             "(`reweighted_acc`): the mean of the accuracies of the groups present, "
             "SubpopBench's adjusted accuracy (the paper's test accuracy on a balanced "
             "test split); worst-group acc (`worst_group_acc`): the lowest accuracy of a "
             "group present. Rule last: the last epoch; "
             f"{study.es_rule}: the early-stopped epoch.")
  header = ["row", "column", "rule"] + [label for _, label in METRICS]
  body = [[e["row"], e["column"], e["rule"]] + [_text(e[m]) for m, _ in METRICS]
          for e in rows(study, df, selections)]
  return [("Average, reweighted and worst-group accuracy", caption, header, body)]
