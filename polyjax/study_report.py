"""What a study reads back from its runs (`polyjax.study`): the selection (`select`:
validation metrics only) and the report (`write_report`: tables, paired t-tests,
figures), in a fixed order with no times or absolute paths, so that a study resumed
after a kill ends with the same bytes as one never stopped. `study` arguments are
`polyjax.study.Study` objects (that module imports this one).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings
from typing import Any, Callable

import numpy as np

from polyjax import accuracy_table, run_dir

FIGURES = {  # File -> what it shows.
    "seeds.png": "each seed's value per table column, the mean as a bar, the paper's number "
                 "as a star (selected lr and batch size)",
    "curves.png": "val and test metric per evaluated epoch, mean ± std over seeds, one "
                  "colour per column (selected lr and batch size)",
    "stage1.png": "stage 1: the selection metric against the lr, per batch size, the chosen "
                  "lrs circled"}
SELECTED = "selected"  # The batch-size key of each cell's selected (lr, batch size).


# ---------------------------------------------------------------------------
# Selection: validation metrics only.

def val_metric(run: pathlib.Path, metric: str, at: str) -> dict[str, Any]:
  """{'status', 'value', 'epoch'} of a stage-1 run's `metric` at its last evaluated
  epoch (`at` 'last') or its best (ties: the earliest), from the val rows of
  metrics.jsonl (no other row) and summary.json's status. Value None (cannot be
  selected): not completed, or not finite."""
  from polyjax.analysis import runs

  summary = run / run_dir.SUMMARY
  status = str(run_dir.read_json(summary).get("status")) if summary.exists() else "not run"
  name = metric.split("/", 1)[1]
  values = {int(r["epoch"]): float(r[name]) for r in (
      runs.Run(run, {}, None).metrics_rows() if status == "completed" else [])
            if r.get("split") == "val" and name in r}
  finite = {e: v for e, v in values.items() if math.isfinite(v)}
  if not finite:
    return {"status": status, "value": None, "epoch": None}
  epoch = max(values) if at == "last" else max(finite, key=lambda e: (finite[e], -e))
  return {"status": status, "value": values[epoch] if epoch in finite else None, "epoch": epoch}


def _best(choices: list[dict]) -> dict | None:
  """The choice with the highest value; ties: the first."""
  valid = [(i, c) for i, c in enumerate(choices) if c.get("value") is not None]
  return max(valid, key=lambda ic: (ic[1]["value"], -ic[0]))[1] if valid else None


def selection_rule(study) -> str:
  """How a study selects, in words."""
  if not any(c.lrs for c in study.cells):
    return "none (no stage 1): each cell keeps its config's lr and batch size"
  at = ("at the last evaluated epoch" if study.at == "last" else
        "at its best evaluated epoch (ties: the earliest)")
  return (f"{study.metric} {at} of each stage-1 run (seed {study.stage1_seed}); per batch "
          f"size the lr with the highest value (ties: the first lr listed); selected: the "
          "batch size whose choice has the best value")


def select(study, cell, members: list[tuple[str, Any]], config, workdir: pathlib.Path
           ) -> dict[str, Any]:
  """The cell's selection (selection.json): each stage-1 run (`members`) with its
  validation value, the lr chosen per batch size and the (batch size, lr) selected;
  run paths relative to `workdir`. Without stage 1, the config's lr and batch size."""
  if not members:
    choice = {"batch_size": int(config.batch_size), "lr": float(config.lr)}
    return {"cell": cell.name, "rule": "fixed: the config's lr and batch size (no stage 1)",
            "candidates": [], "by_batch_size": [choice], "selected": choice}
  candidates = []
  for name, member in members:
    found = val_metric(workdir / cell.name / "stage1" / name, study.metric, study.at)
    candidates.append({"run": f"{cell.name}/stage1/{name}",
                       "batch_size": int(member.batch_size), "lr": float(member.lr), **found})
  by_batch_size = []
  for b in cell.batch_sizes:
    best = _best([c for c in candidates if c["batch_size"] == b])
    by_batch_size.append(best or {"batch_size": b, "lr": None, "value": None,
                                  "note": "no completed stage-1 run with a finite value"})
  return {"cell": cell.name, "metric": study.metric, "at": study.at,
          "rule": selection_rule(study), "candidates": candidates,
          "by_batch_size": by_batch_size, "selected": _best(by_batch_size)}


# ---------------------------------------------------------------------------
# The table.

def stage2_name(batch_size, lr, seed) -> str:
  """The directory name of a stage-2 run under <cell>/stage2."""
  return f"batch_size={int(batch_size)},lr={float(lr)},seed={seed}"


def expected_runs(study, selections: dict[str, dict]) -> dict[str, str]:
  """'<cell>/stage2/<name>' -> cell name, of every stage-2 run the selections ask for."""
  return {f"{cell.name}/stage2/{stage2_name(c['batch_size'], c['lr'], s)}": cell.name
          for cell in study.cells for c in selections[cell.name]["by_batch_size"]
          if c.get("lr") is not None for s in study.seeds}


def results(study, selections: dict[str, dict], csv_path: pathlib.Path, workdir: pathlib.Path):
  """The rows of results.csv (`polyjax.analysis.collect`'s) of the stage-2 runs the
  selections ask for (not those of an earlier selection), with cell, rel (the path
  under `workdir`) and rule (the logged task's checkpoint rule)."""
  import pandas as pd

  from polyjax.analysis import results as results_lib

  if not csv_path.exists():
    return pd.DataFrame(columns=["cell", "batch_size", "seed", "rel", "rule", "split"])
  df = results_lib.read(csv_path)
  wanted, root = expected_runs(study, selections), str(pathlib.Path(workdir).resolve()) + os.sep
  df = df.assign(rel=df["run"].astype(str).str.removeprefix(root))
  df = df[df["rel"].isin(wanted)]
  return df.assign(cell=df["rel"].map(wanted), rule=df["checkpoint"].astype(str)).sort_values(
      ["cell", "batch_size", "seed", "rule", "split"], kind="stable")


def batches(study, selections) -> list[str]:
  """The tables' batch keys: SELECTED, then, if some cell tuned several batch sizes,
  every batch size some cell ran in stage 2."""
  ran = {int(c["batch_size"]) for s in selections.values() for c in s["by_batch_size"]
         if c.get("lr") is not None}
  several = any(len(c.batch_sizes) > 1 and c.lrs for c in study.cells)
  return [SELECTED] + [str(b) for b in _sizes(selections) if several and b in ran]


def place(study, row: str, column: str):
  """(cell, rule) of a place of the table: the cell at (row, column) and 'last'; for
  '<column>-ES', the cell at (row, column) and `study.es_rule`; cell None if none."""
  plain = column in {c.column for c in study.cells}
  base, rule = (column, "last") if plain else (column.removesuffix("-ES"), study.es_rule)
  return next((c for c in study.cells if (c.row, c.column) == (row, base)), None), rule


def _values(study, df, selections, batch: str, row: str, column: str) -> dict[int, float]:
  """seed -> value of the table's metric at one place of the table."""
  (cell, rule), (split, metric) = place(study, row, column), study.table_metric.split("/")
  choice = cell and selections[cell.name]["selected"]
  if not choice or df.empty or metric not in df.columns:
    return {}
  size = int(choice["batch_size"] if batch == SELECTED else batch)
  rows = df[(df["cell"] == cell.name) & (df["batch_size"] == size) & (df["rule"] == rule)
            & (df["split"].astype(str) == split)]
  return {int(s): float(v) for s, v in zip(rows["seed"], rows[metric]) if not math.isnan(v)}


def table(study, df, selections, papers: dict[str, dict]) -> list[dict[str, Any]]:
  """Per batch key, row and column that has a cell: mean, std (ddof=1) and n of the
  table's metric over seeds, and the paper's number (None if it has none)."""
  out = []
  for batch in batches(study, selections):
    for row in study.rows:
      for column in study.columns:
        cell, rule = place(study, row, column)
        if cell is not None:
          v = np.array(list(_values(study, df, selections, batch, row, column).values()))
          out.append({"batch": batch, "row": row, "column": column, "cell": cell.name,
                      "metric": study.table_metric, "rule": rule,
                      "mean": float(v.mean()) if len(v) else math.nan,
                      "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": len(v),
                      "paper": papers.get(cell.name, {}).get("final" if rule == "last"
                                                                else "best")})
  return out


def paired(study, df, selections) -> list[dict[str, Any]]:
  """Seed-paired t-tests (scipy.stats.ttest_rel) of row b against row a of each pair
  of `study.paired`, per batch key and column: means, b - a, t, p and the pairs."""
  from scipy import stats

  out = []
  for batch in batches(study, selections):
    for a, b in study.paired:
      for column in study.columns:
        va, vb = (_values(study, df, selections, batch, r, column) for r in (a, b))
        seeds = sorted(set(va) & set(vb))
        if not seeds:
          continue
        xa, xb = np.array([va[s] for s in seeds]), np.array([vb[s] for s in seeds])
        diff = xb - xa
        if len(diff) < 2:
          t = p = math.nan
        elif np.allclose(diff, diff.mean(), rtol=0, atol=1e-12):
          # Equal differences (accuracies are ratios of counts, so this happens): the
          # limit, +-inf and p 0, or NaN when all are 0, not rounding noise's huge t.
          zero = abs(diff.mean()) <= 1e-12
          t, p = (math.nan, math.nan) if zero else (math.copysign(math.inf, diff.mean()), 0.0)
        else:
          t, p = (float(x) for x in stats.ttest_rel(xb, xa))
        out.append({"batch": batch, "column": column, "a": a, "b": b, "n_pairs": len(seeds),
                    "mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
                    "mean_diff": float(diff.mean()), "t": t, "p": p})
  return out


# ---------------------------------------------------------------------------
# Text: markdown and LaTeX.

def _number(v: float | None) -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def cell_text(e: dict[str, Any]) -> str:
  """'mean ± std (n)', and '[paper x]' where the paper has a number."""
  text = f"{_number(e['mean'])} ± {_number(e['std'])} ({e['n']})" if e["n"] else "no completed runs"
  return text + (f" [paper {_number(e['paper'])}]" if e["paper"] is not None else "")


def _grid(study, long: list[dict], batch: str) -> list[list[str]]:
  places = {(e["row"], e["column"]): e for e in long if e["batch"] == batch}
  return [[row] + [cell_text(places[row, c]) if (row, c) in places else ""
                   for c in study.columns] for row in study.rows]


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return out + ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows]


def _tex(text: str) -> str:
  for a in ("_", "%", "&", "#"):
    text = text.replace(a, "\\" + a)
  return text.replace("±", r"$\pm$")


def _latex(header: list[str], rows: list[list[str]], caption: str) -> list[str]:
  out = [r"\begin{table}[ht]", r"\centering\small", r"\begin{tabular}{" + "l" * len(header) + "}",
         r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
  out += [" & ".join(_tex(str(v)) for v in r) + r" \\" for r in rows]
  return out + [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex(caption) + "}",
                r"\end{table}", ""]


def _caption(study) -> str:
  split, metric = study.table_metric.split("/")
  return (f"{split} {metric}: mean ± std (ddof=1) over the stage-2 seeds (n = seeds whose "
          "run completed; a seed that diverged is left out). Columns without -ES: last "
          "epoch; -ES: the epoch with the best "
          f"val/{study.es_rule.removeprefix('best_val_')} "
          "(early stopping). [paper x]: the paper's number for the cell.")


def _paired_rows(tests: list[dict]) -> tuple[list[str], list[list[str]]]:
  return (["batch", "column", "a", "b", "pairs", "mean a", "mean b", "b - a", "t", "p"],
          [[t["batch"], t["column"], t["a"], t["b"], str(t["n_pairs"]), _number(t["mean_a"]),
            _number(t["mean_b"]), f"{t['mean_diff']:+.3f}", f"{t['t']:.3f}", f"{t['p']:.3g}"]
           for t in tests])


def _sizes(selections) -> list[int]:
  return list(dict.fromkeys(int(c["batch_size"]) for s in selections.values()
                            for c in s["candidates"] + s["by_batch_size"]))


def _selection_rows(study, selections) -> tuple[list[str], list[list[str]]]:
  sizes = _sizes(selections)
  header = ["cell", "row", "column", "config (overrides not common to all cells)"] + [
      f"batch {b}: lr ({study.metric})" for b in sizes] + ["selected"]
  rows = []
  for cell in study.cells:
    sel, by = selections[cell.name], {int(c["batch_size"]): c
                                      for c in selections[cell.name]["by_batch_size"]}
    picks = [("-" if by.get(b, {}).get("lr") is None else f"{by[b]['lr']:g}" + (
        f" ({_number(by[b]['value'])}, epoch {by[b]['epoch']})" if by[b].get("value")
        is not None else "")) for b in sizes]
    failed = [f"{c['lr']:g} at {c['batch_size']} {c['status']}" for c in sel["candidates"]
              if c["status"] != "completed"]
    reads = f" (reads cell {cell.stage1_cell}'s runs)" if cell.stage1_cell else ""
    rows.append([cell.name, cell.row, cell.column, cell.config + "".join(
        f" {k}={v}" for k, v in sorted(cell.overrides.items()) if k not in _common(study))
                 + reads]
        + picks + ["none" if sel["selected"] is None else f"batch {sel['selected']['batch_size']}"
                   f", lr {sel['selected']['lr']:g}" + "".join(f"; {f}" for f in failed)])
  return header, rows


def _common(study) -> dict[str, Any]:
  """The overrides every cell sets to the same value."""
  first, *rest = (c.overrides for c in study.cells)
  return {k: v for k, v in first.items() if all(k in o and o[k] == v for o in rest)}


# ---------------------------------------------------------------------------
# Figures (matplotlib, Agg).

def _subplots(*args, **kwargs):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(*args, layout="constrained", **kwargs)


def _save(fig, path: pathlib.Path) -> None:
  import io

  import matplotlib.pyplot as plt

  buf = io.BytesIO()  # No software version or date in the file: a rerun writes the same bytes.
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
  plt.close(fig)
  write_file(path, buf.getvalue())


def seeds_figure(study, df, selections, long, path: pathlib.Path) -> None:
  """Each seed's value per column (x) and row (colour), the mean as a bar, the paper's
  number as a star; at each cell's selected (lr, batch size)."""
  rows, columns = study.rows, study.columns
  fig, ax = _subplots(figsize=(2.0 + 1.2 * len(columns) * max(1, len(rows)) ** 0.5, 4.2))
  width = 0.8 / len(rows)
  paper = {(e["row"], e["column"]): e["paper"] for e in long if e["batch"] == SELECTED}
  paper_label = ["paper"]  # Once in the legend.
  for i, row in enumerate(rows):
    labelled = False
    for j, column in enumerate(columns):
      x = j - 0.4 + width * (i + 0.5)
      values = _values(study, df, selections, SELECTED, row, column)
      if values:
        ys = [values[s] for s in sorted(values)]
        ax.scatter(x + np.linspace(-0.3, 0.3, len(ys)) * width, ys, s=14, color=f"C{i % 10}",
                   alpha=0.65, label=None if labelled else row)
        ax.hlines(np.mean(ys), x - 0.42 * width, x + 0.42 * width, color=f"C{i % 10}", lw=2.5)
        labelled = True
      if paper.get((row, column)) is not None:
        ax.scatter([x], [paper[row, column]], marker="*", s=90, color="black", zorder=3,
                   label=paper_label.pop() if paper_label else None)
  split, metric = study.table_metric.split("/")
  ax.set_xticks(range(len(columns)), columns)
  ax.set_ylabel(f"{split} {metric}")
  ax.set_title(f"{study.title}\none dot per seed, bar = mean (-ES: early stopped on val; "
               "others: last epoch; selected lr and batch size)", fontsize=9)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  _save(fig, path)


def _curves(workdir: pathlib.Path, rels: list[str], split: str, metric: str):
  """(epochs, seeds x epochs values) of `split`/`metric` logged by the runs `rels`."""
  from polyjax.analysis import runs

  per_run = [{int(r["epoch"]): float(r[metric]) for r in runs.Run(
      workdir / rel, {}, None).metrics_rows() if r.get("split") == split and metric in r}
             for rel in rels]
  epochs = sorted(set.intersection(*(set(v) for v in per_run))) if per_run else []
  return epochs, np.array([[v[e] for e in epochs] for v in per_run])


def curves_figure(study, df, selections, workdir: pathlib.Path, path: pathlib.Path) -> None:
  """Val and test metric per epoch: one panel column per row of the table, one colour
  per cell column, mean over seeds shaded by ± std; selected lr and batch size."""
  metric = study.table_metric.split("/")[1]
  base = list(dict.fromkeys(c.column for c in study.cells))
  fig, axes = _subplots(2, len(study.rows), figsize=(3.6 * len(study.rows) + 1.5, 5.6),
                           squeeze=False, sharex="col")
  for j, row in enumerate(study.rows):
    for cell in (c for c in study.cells if c.row == row):
      chosen = selections[cell.name]["selected"]
      rels = sorted(set(df.loc[(df["cell"] == cell.name) & (df["batch_size"] == int(
          chosen["batch_size"])), "rel"])) if chosen is not None and len(df) else []
      for i, split in enumerate(("val", "test")):
        epochs, values = _curves(workdir, rels, split, metric)
        if not epochs:
          continue
        mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else 0 * values[0]
        c = f"C{base.index(cell.column) % 10}"
        axes[i, j].plot(epochs, mean, color=c, lw=1.5, label=f"{cell.column} (n={len(values)})")
        axes[i, j].fill_between(epochs, mean - std, mean + std, color=c, alpha=0.2, lw=0)
    for i, split in enumerate(("val", "test")):
      axes[i, j].set_title(f"{row}: {split}", fontsize=9)
      axes[i, j].set_ylabel(f"{split} {metric}")
      axes[i, j].grid(alpha=0.3)
    axes[1, j].set_xlabel("epoch")
    axes[0, j].legend(fontsize=7, frameon=False, loc="lower right")
  fig.suptitle(f"{study.title}\n{metric} per evaluated epoch, mean ± std over seeds "
               "(selected lr and batch size)", fontsize=10)
  _save(fig, path)


def stage1_figure(study, selections, path: pathlib.Path) -> None:
  """The selection metric of every stage-1 run against its lr, one line per batch
  size, the chosen lr of each circled; one panel per cell."""
  base = list(dict.fromkeys(c.column for c in study.cells))
  fig, axes = _subplots(len(study.rows), len(base), squeeze=False,
                           figsize=(3.2 * len(base) + 1.5, 2.8 * len(study.rows)))
  sizes = _sizes(selections)
  for ax in axes.flat:
    ax.set_visible(False)
  for cell in study.cells:
    ax = axes[study.rows.index(cell.row), base.index(cell.column)]
    ax.set_visible(True)
    sel = selections[cell.name]
    for k, b in enumerate(sizes):
      points = [(c["lr"], c["value"]) for c in sel["candidates"]
                if c["batch_size"] == b and c["value"] is not None]
      if points:
        ax.plot(*zip(*sorted(points)), "o-", ms=3, color=f"C{k % 10}", label=f"batch {b}")
    failed = [c["lr"] for c in sel["candidates"] if c["value"] is None]
    if failed and ax.has_data():  # At the panel's lowest value: the y-axis fits the data.
      ax.scatter(failed, [ax.dataLim.y0] * len(failed), marker="x", color="red",
                 label="diverged / not completed")
    chosen = [(c["lr"], c["value"]) for c in sel["by_batch_size"] if c.get("value") is not None]
    if chosen:
      ax.scatter(*zip(*chosen), s=90, facecolors="none", edgecolors="black", label="chosen",
                 zorder=3)
    ax.set_xscale("log")
    ax.set_title(f"{cell.row}: {cell.column}", fontsize=9)
    ax.set_xlabel("lr")
    ax.set_ylabel(f"{study.metric} ({study.at} epoch)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
  fig.suptitle(f"{study.title}\nstage 1, seed {study.stage1_seed} (validation only)",
               fontsize=10)
  _save(fig, path)


# ---------------------------------------------------------------------------
# The report.

def write_file(path: pathlib.Path, data: str | bytes | dict) -> None:
  """Writes `data` (a dict as JSON) atomically unless the file holds it already: a
  rerun changes nothing."""
  if isinstance(data, dict):
    data = json.dumps(run_dir.jsonable(data), indent=2) + "\n"
  data = data.encode() if isinstance(data, str) else data
  if path.exists() and path.read_bytes() == data:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def _sections(study, selections, long, tests) -> list[tuple[str, str, list, list]]:
  """(title, caption, header, rows) of each table of the report, in order."""
  header, out = [""] + list(study.columns), []
  for batch in batches(study, selections):
    out.append(("Results: " + ("each cell at its selected (lr, batch size)" if batch == SELECTED
                               else f"batch size {batch}, each cell at its lr chosen for it"),
                _caption(study), header, _grid(study, long, batch)))
  if tests:
    out.append(("Paired t-tests", f"Seed-paired t-tests (scipy.stats.ttest_rel) of "
                f"{study.table_metric}, row b against row a, per batch key and column.",
                *_paired_rows(tests)))
  common = " ".join(f"{k}={v}" for k, v in sorted(_common(study).items())) or "none"
  return out + [("Selected hyperparameters", f"Selection: {selection_rule(study)}. Per batch "
                 "size: the lr chosen (its stage-1 value, epoch); stage-1 runs that did not "
                 f"complete follow the selection. Overrides of every cell: {common}. Details "
                 "in each cell's selection.json.", *_selection_rows(study, selections))]


def write_report(study, workdir: pathlib.Path, selections: dict[str, dict],
                 papers: dict[str, dict], overrides: dict[str, Any],
                 out: Callable[[str], None]) -> pathlib.Path:
  """Writes report.md, report.tex, table.csv and the figures into `workdir`; returns
  report.md's path. `papers`: cell name -> the paper's numbers ('final', 'best')."""
  import pandas as pd

  df = results(study, selections, workdir / "results.csv", workdir)
  long, tests = table(study, df, selections, papers), paired(study, df, selections)
  write_file(workdir / "table.csv", pd.DataFrame(long, columns=[
      "batch", "row", "column", "cell", "metric", "rule", "mean", "std", "n", "paper"]
  ).to_csv(index=False, lineterminator="\n"))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Empty panels of cells without runs.
    seeds_figure(study, df, selections, long, workdir / "seeds.png")
    curves_figure(study, df, selections, workdir, workdir / "curves.png")
    if any(s["candidates"] for s in selections.values()):
      stage1_figure(study, selections, workdir / "stage1.png")
  given = " ".join(f"--config.{k}={v}" for k, v in sorted(overrides.items())) or "none"
  stage1 = (f"every lr of each cell's grid at batch sizes {', '.join(map(str, _sizes(selections)))}"
            f", seed {study.stage1_seed}" if any(c.lrs for c in study.cells) else "none")
  md = [f"# {study.title}", "", *([study.description, ""] if study.description else []),
        f"Study file `{study.path}`; command-line overrides: {given}.", "", "## Protocol", "",
        f"- Stage 1: {stage1}.", f"- Selection: {selection_rule(study)}.",
        f"- Stage 2: seeds {', '.join(map(str, study.seeds))} of each batch size's choice.", ""]
  tex = [r"\documentclass{article}", r"\usepackage{booktabs}", r"\begin{document}", ""]
  for title, caption, header, rows in (_sections(study, selections, long, tests)
                                       + accuracy_table.section(study, df, selections)):
    md += [f"## {title}", "", caption, "", *_md(header, rows), ""]
    tex += _latex(header, rows, f"{title}. {caption}")
  md += ["## Figures", ""] + [f"- {text}:\n\n  ![{name}]({name})\n" for name, text in
                              FIGURES.items() if (workdir / name).exists()]
  write_file(workdir / "report.tex", "\n".join(tex + [r"\end{document}", ""]))
  write_file(workdir / "report.md", "\n".join(md))
  out(f"report: {workdir / 'report.md'} (also report.tex, table.csv and the figures)")
  return workdir / "report.md"
