"""What a run or a sweep group shows while it trains: a live bar on a terminal, plain
per-epoch lines in a log.

`Progress` is called once per epoch boundary by the training loop
(`train.train_members`, for a run and for a sweep's group), outside any jitted code. Where
the output goes decides what it shows:

- stdout is a terminal: a tqdm bar (epoch/num_epochs, rate, ETA and the latest
  metrics), redrawn in place. With `log_every=N > 0` the plain line of every Nth
  evaluated epoch is printed above the bar as well.
- anything else (a pipe, a log file, CI, SLURM): no bar, no carriage returns; the
  plain line of every `log_every`-th evaluated epoch (0 or 1: every one) and of the
  last epoch, as the loops printed before the bar existed, so logs and the tests
  that read them stay as they were.

Only the process that writes the run (process 0) shows anything (`enabled`).
The bar and the lines share stdout: tqdm clears the bar, writes a line and redraws
it, and `python -m polyjax.main ... > log` writes a log without a bar in it.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Mapping

from tqdm import tqdm

# Shown after the bar: the objective being minimised and the accuracies the paper
# reports (validation for model selection, test for the result).
BAR_KEYS = ("train/objective", "val/reweighted_acc", "test/reweighted_acc")
# Compact enough that, on a narrow terminal, tqdm trims the metrics at the end of the
# line rather than the count, the ETA or the rate; the bar itself has a fixed width.
_BAR_FORMAT = ("{desc} {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar:12}| "
               "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


class _Bar(tqdm):
  # No monitor thread: it only adjusts `miniters`, which is fixed at one epoch here,
  # and a thread that outlives the loop has no place in a process that handles signals.
  monitor_interval = 0

  def __init__(self, **kwargs):
    super().__init__(dynamic_ncols=True, **kwargs)  # Follows the terminal's width.
    if self.disable:  # TQDM_DISABLE: tqdm set nothing up (`Progress` prints lines).
      return
    # tqdm's own size query hides the bar on a terminal of 0 rows and trims it to
    # nothing at 0 columns: what a pseudo-terminal without a size reports (`script`
    # without a terminal, some CI runners).
    self.dynamic_ncols = _terminal_shape
    self.ncols, self.nrows = _terminal_shape(self.fp)


def _terminal_shape(stream: IO) -> tuple[int | None, int | None]:
  """(columns, rows) as tqdm takes them (one less than the terminal's, so the bar
  never wraps), None for a size the terminal does not report (tqdm's default)."""
  try:
    columns, rows = os.get_terminal_size(stream.fileno())
  except (AttributeError, OSError, ValueError):
    return None, None
  return (columns - 1 if columns > 1 else None), (rows - 1 if rows > 1 else None)


def is_terminal(stream: IO | None) -> bool:
  """Whether `stream` is an interactive terminal (False for a closed stream)."""
  try:
    return bool(stream is not None and stream.isatty())
  except (AttributeError, ValueError):  # No isatty, or closed.
    return False


def metrics_text(values: Mapping[str, float], keys=BAR_KEYS) -> str:
  """'train/objective=0.1234, val/reweighted_acc=0.9012, ...' (tqdm's postfix style)
  for the keys present."""
  return ", ".join(f"{k}={values[k]:.4f}" for k in keys if k in values)


class Progress:
  """The progress display of one training loop: `epoch` at every epoch boundary,
  `write` for a message, `close` at the end (or use it as a context manager).

  Args:
    num_epochs: the epoch the loop ends at.
    start_epoch: epochs already done (a resumed run's bar starts there; its rate and
      ETA count only the epochs trained now).
    desc: what is training, shown before the count ('epoch', 'group 1/2 (4 members)').
    log_every: print the plain line of every Nth evaluated epoch (counted by epoch
      number, so that a resumed run prints the same epochs as an uninterrupted one).
      0: on a terminal none, elsewhere every one.
    eval_every: the loop's `config.eval_every_epochs` (which epochs are evaluated).
    enabled: False on every process but the one that writes the run.
    stream: where to write (default: sys.stdout at construction).
  """

  def __init__(self, num_epochs: int, *, start_epoch: int = 0, desc: str = "epoch",
               log_every: int = 0, eval_every: int = 1, enabled: bool = True,
               stream: IO | None = None):
    if log_every < 0:
      raise ValueError(f"log_every must be >= 0, got {log_every}")
    self.num_epochs, self.eval_every = num_epochs, max(1, eval_every)
    self.enabled = enabled
    self.stream = sys.stdout if stream is None else stream
    self._bar = None
    if enabled and is_terminal(self.stream):
      self._bar = _Bar(total=num_epochs, initial=start_epoch, desc=desc, unit="epoch",
                       file=self.stream, bar_format=_BAR_FORMAT, miniters=1, leave=True)
      if self._bar.disable:  # TQDM_DISABLE=1 in the environment: lines instead.
        self._bar = None
    # Lines on a terminal only when asked for; elsewhere they are the whole display.
    self.log_every = log_every if self._bar is not None else max(1, log_every)

  @property
  def interactive(self) -> bool:
    """Whether a bar is shown."""
    return self._bar is not None

  def epoch(self, epoch: int, *, bar_text: str | None = None, line: str | None = None
            ) -> None:
    """Epochs up to `epoch` are done. `bar_text`: the metrics to show after the bar
    from now on (evaluated epochs). `line`: this epoch's plain line (evaluated
    epochs), printed if it is one of every `log_every`."""
    if not self.enabled:
      return
    if self._bar is not None:  # First, so that a line below redraws the bar as it is now.
      if bar_text is not None:
        self._bar.set_postfix_str(bar_text, refresh=False)
      # Absolute, so that a call that trained several epochs moves the bar as far.
      self._bar.update(epoch - self._bar.n)
    if line is not None and self.log_every and (
        (epoch // self.eval_every) % self.log_every == 0 or epoch == self.num_epochs):
      self.write(line)

  def write(self, text: str) -> None:
    """Prints `text` (a line) above the bar, or plainly when there is none."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=self.stream)
    else:
      print(text, file=self.stream, flush=True)

  def close(self) -> None:
    """Leaves the bar's last state on the screen (once; later calls do nothing)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
