"""What loading a dataset raises when its files are missing or unusable.

A leaf module, with no dataset library behind it, so that code which only reports
these errors (`polyjax.main`, `polyjax.data.load`) imports none of them.
"""

from __future__ import annotations


class DataMissing(FileNotFoundError):
  """A dataset that has not been prepared; the message says how to prepare it."""


class DataInvalid(DataMissing):
  """A dataset on disk that cannot be used as it is: a corrupt, truncated or missing
  file, a missing column, a value out of range. The message, one line, names the
  file (and the line and column where they apply).

  A `DataMissing`, so that what already reports missing data (polyjax.main, the
  `polyjax.data` command) reports this the same way, without a traceback."""


def reason(e: BaseException) -> str:
  """'TypeName: first line of the message', for quoting an error in a one-line message."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
