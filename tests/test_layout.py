"""The package's shape: imports run one way and flags live only in the command lines."""

from __future__ import annotations

import ast
import os

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "cxr_jax")


def _modules() -> dict[str, str]:
  """Dotted module name -> path, for every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, name), REPO)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = os.path.join(root, name)
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The package's modules that a module imports at load time (inside functions too)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    found.update(n for n in names if n in modules)
  return found


def test_no_import_cycle_between_modules():
  modules = _modules()
  graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
  # A package's __init__ re-exporting its own modules is not a cycle of the code.
  graph = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")}
           for m, deps in graph.items()}
  state: dict[str, int] = {}  # 1: on the current path, 2: done.

  def visit(m: str, path: list[str]) -> None:
    state[m] = 1
    for d in sorted(graph[m]):
      assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [m, d])
      if d not in state:
        visit(d, path + [m])
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m, [])


def test_library_never_defines_flags_nor_imports_the_command_lines():
  for module, path in _modules().items():
    if module.startswith("cxr_jax.tools"):
      continue
    source = open(path).read()
    assert "flags.DEFINE" not in source, f"{module} defines flags"
    imported = _imports(path, _modules())
    assert not {m for m in imported if m.startswith("cxr_jax.tools")} - {
        "cxr_jax.tools"}, f"{module} imports a command line"
    tree = ast.parse(source)
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "absl":
        assert "flags" not in [a.name for a in node.names], f"{module} imports absl.flags"
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        top = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
        assert top.split(".")[0] != "configs", f"{module} imports the configs package"
