"""The tests' subprocesses find this checkout first and keep the caller's PYTHONPATH
(where packages may be installed)."""

import os

import subprocess_env


def test_pythonpath_puts_the_checkout_first_and_keeps_the_callers_entries(monkeypatch):
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/site/a", "", "/site/b"]))
  assert subprocess_env.pythonpath() == os.pathsep.join([subprocess_env.REPO, "/site/a",
                                                         "/site/b"])
  assert subprocess_env.env(X="1")["PYTHONPATH"] == subprocess_env.pythonpath()
  monkeypatch.delenv("PYTHONPATH")
  assert subprocess_env.pythonpath("/elsewhere") == "/elsewhere"
