"""The package's shape: imports run one way (no cycle, counting imports inside
functions too), no module reaches into another's private names, functions and
modules stay small enough to read, and a digits run imports no library that only
other datasets or pipelines need."""

import ast
import pathlib
import subprocess
import sys

import subprocess_env

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "polyjax"
MAX_FUNCTION_LINES = 80  # Methods and nested functions included, decorators not.
MAX_MODULE_LINES = 500


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """The polyjax modules that module `name` imports, anywhere in its code."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  deps = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      deps |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: from the package, `level - 1` packages up.
        parents = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parents + ([base] if base else []))
      for a in node.names:  # `from polyjax import losses` imports a module.
        deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
  return {d for d in deps if d in modules and d != name}


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(name, path, modules) for name, path in modules.items()}
  state: dict[str, str] = {}  # 'open' while on the DFS stack, then 'done'.

  def visit(name, stack):
    state[name] = "open"
    for dep in sorted(graph[name]):
      assert state.get(dep) != "open", "import cycle: " + " -> ".join(
          stack[stack.index(dep):] + [dep])
      if dep not in state:
        visit(dep, stack + [dep])
    state[name] = "done"

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])


def test_no_private_names_across_modules():
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    tree = ast.parse(path.read_text())
    aliases = set()  # Local names bound to polyjax modules or their members.
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polyjax"):
        for a in node.names:
          if a.name.startswith("_") and not a.name.startswith("__"):
            found.append(f"{path.name}: imports {node.module}.{a.name}")
          aliases.add(a.asname or a.name)
      elif isinstance(node, ast.Import):
        aliases |= {a.asname or a.name.split(".")[0] for a in node.names
                    if a.name.startswith("polyjax")}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not found, found


def _functions(tree: ast.AST, prefix: str = ""):
  """(qualified name, node) of every function in `tree`, nested ones and methods too."""
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      name = f"{prefix}{node.name}"
      if not isinstance(node, ast.ClassDef):
        yield name, node
      yield from _functions(node, f"{name}.")
    else:
      yield from _functions(node, prefix)


def test_functions_and_modules_are_small():
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent)
    text = path.read_text()
    if (n := len(text.splitlines())) > MAX_MODULE_LINES:
      found.append(f"{rel}: module of {n} lines")
    for name, node in _functions(ast.parse(text)):
      if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
        found.append(f"{rel}:{node.lineno}: {name} is {n} lines")
  assert not found, (
      f"over the size limits (a function at most {MAX_FUNCTION_LINES} lines, a module at "
      f"most {MAX_MODULE_LINES}); split these by concern:\n  " + "\n  ".join(found))


# Libraries that only some datasets or pipelines need: tfds (and TensorFlow behind it)
# for CIFAR-10 and CelebA, grain for reading their records and for
# data.pipeline='stream', PIL for CelebA and Waterbirds, pandas for Waterbirds,
# scikit-learn only where its digits file is not where digits looks.
OPTIONAL = ("tensorflow_datasets", "tensorflow", "grain", "PIL", "pandas", "sklearn")


def test_a_digits_run_imports_no_optional_library():
  # A fresh process: what the command lines import, then the digits and Figure 1 data.
  script = f"""
import sys
import polyjax.main, polyjax.sweep, polyjax.train
from polyjax import data
data.load("gaussians", weighting_mode="none", exponent=1.0)
data.load("digits", weighting_mode="reweighted", exponent=1.0)
print(" ".join(m for m in {OPTIONAL!r} if m in sys.modules))
"""
  out = subprocess.run([sys.executable, "-c", script], cwd=subprocess_env.REPO,
                       env=subprocess_env.env(JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  imported = out.stdout.split()
  assert not imported, (
      f"a digits run imports {', '.join(imported)}; import them where the dataset or "
      "pipeline that needs them is built (see polyjax.data.DATASETS)")
