"""References in the repository point to files users have.

Docstrings, comments, notebooks and docs cite documents by path; every such path
must exist in the repository, and none may cite a planning document users do not
have. Also: the README and docs/figures.md run the figure scripts with flags the
scripts accept.
"""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Built from parts so that this file does not match itself.
PRIVATE_CITATION = re.compile(r"\b" + "SP" + r"EC\b")  # The word, in any citation form.
DOCS_PATH = re.compile(r"\bdocs/[\w./-]+?\.md\b")
# Markdown links to local files: [text](path) or [text](path#anchor).
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")
CODE_DIRS = ("polyjax", "configs", "scripts", "notebooks", "benchmarks", "tests")


def _repo_files() -> list[pathlib.Path]:
  """Tracked files and new files not ignored, as they are in the working tree."""
  if shutil.which("git") is None or not (ROOT / ".git").exists():
    pytest.skip("not a git checkout")
  out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=ROOT, capture_output=True, check=True).stdout
  paths = [ROOT / p for p in out.decode().split("\0") if p]
  return [p for p in paths if p.is_file()]  # Deleted but not yet committed: gone.


def _text(path: pathlib.Path) -> str | None:
  try:
    return path.read_text(encoding="utf-8")
  except UnicodeDecodeError:  # Binary.
    return None


def test_no_citation_of_a_private_document():
  hits = []
  for path in _repo_files():
    text = _text(path)
    if text is None:
      continue
    for i, line in enumerate(text.splitlines(), 1):
      if PRIVATE_CITATION.search(line):
        hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
  assert not hits, "cite a file of the repository (docs/...) instead:\n" + "\n".join(hits)


def test_cited_docs_exist():
  missing = []
  for path in _repo_files():
    rel = path.relative_to(ROOT)
    if rel.parts[0] not in CODE_DIRS and rel.name != "README.md":
      continue
    text = _text(path)
    if text is None:
      continue
    for cited in set(DOCS_PATH.findall(text)):
      if not (ROOT / cited).is_file():
        missing.append(f"{rel}: {cited}")
  assert not missing, "\n".join(sorted(missing))


def test_markdown_links_resolve():
  broken = []
  for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
    for target in set(MD_LINK.findall(path.read_text())):
      if "://" in target or target.startswith("mailto:"):
        continue
      if not (path.parent / target).exists():
        broken.append(f"{path.relative_to(ROOT)}: {target}")
  assert not broken, "\n".join(sorted(broken))


def _script_commands(text: str) -> list[list[str]]:
  """The `python scripts/figure*.py ...` commands of a document, as argument lists."""
  commands = []
  for line in text.splitlines():
    line = line.split("#", 1)[0].strip()
    match = re.match(r"(?:\S+=\S+\s+)*python (scripts/figure\d\.py\b.*)", line)
    if match:
      commands.append(match.group(1).split())
  return commands


def _script(name: str):
  import importlib.util

  spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("doc", ["README.md", "docs/figures.md"])
def test_figure_commands_match_the_scripts(doc):
  commands = _script_commands((ROOT / doc).read_text())
  assert {c[0] for c in commands} == {"scripts/figure1.py", "scripts/figure2.py"}, commands
  for script, *args in commands:
    _script(script).parse_args(args)  # Exits (SystemExit) on a flag the script does not take.


def test_readme_and_figures_doc_run_the_scripts_alike():
  readme, figures = (_script_commands((ROOT / d).read_text())
                     for d in ("README.md", "docs/figures.md"))
  assert readme == figures


def test_figures_doc_lists_every_flag(capsys):
  flags = set()
  for script in ("scripts/figure1.py", "scripts/figure2.py"):
    with pytest.raises(SystemExit):
      _script(script).parse_args(["--help"])
    flags |= set(re.findall(r"(--[a-z][\w-]*)", capsys.readouterr().out)) - {"--help"}
  documented = set(re.findall(r"`(--[a-z][\w-]*)`", (ROOT / "docs/figures.md").read_text()))
  assert documented == flags
