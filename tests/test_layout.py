"""The package's shape: imports run one way, down the README's tiers, and flags live only in
the command lines."""

from __future__ import annotations

import ast
import os

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "cxr_jax")

# docs/design.md, "How the code is laid out": the product's tiers, highest first. A module may
# import its own tier and those below it, never one above. The lab (cxr_lab/: studies and
# benchmarks) sits above them all; the product never imports it.
TIERS = (
    ("tools",),
    ("report", "serve", "predict"),  # predict draws Grad-CAM grids with the report's figures.
    ("train", "evaluate", "export"),
    ("registry", "config_checks"),  # The kinds' table: trainers and predictors meet here.
    ("trainers", "inference", "fits"),
    ("metrics", "workdir", "model_card"),
    ("models", "data"),
    ("ops", "checkpoints", "sharding", "runtime"),
)
LAB = os.path.join(REPO, "cxr_lab")


def _modules(package: str = PACKAGE) -> dict[str, str]:
  """Dotted module name -> path, for every module of the package."""
  out = {}
  for root, _, files in os.walk(package):
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


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def tier_of(module: str) -> int | None:
  """The index in TIERS (0: highest) of the longest tier entry that names `module` or a
  package above it; None for a module no tier names (the package's own __init__ is lowest)."""
  if module == "cxr_jax":
    return len(TIERS) - 1
  best, depth = None, -1
  for index, names in enumerate(TIERS):
    for name in names:
      prefix = f"cxr_jax.{name}"
      if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
        best, depth = index, prefix.count(".")
  return best


def tier_violations(graph: dict[str, set[str]]) -> list[str]:
  """"a (tier) imports b (higher tier)" for every import that runs up the tiers."""
  out = []
  for module, deps in sorted(graph.items()):
    for dep in sorted(deps):
      if tier_of(dep) < tier_of(module):
        out.append(f"{module} ({', '.join(TIERS[tier_of(module)])}) imports {dep} "
                   f"({', '.join(TIERS[tier_of(dep)])}), a higher tier")
  return out


def test_every_module_has_a_tier():
  missing = sorted(m for m in _modules() if tier_of(m) is None)
  assert not missing, f"modules in no tier of TIERS (add them where they belong): {missing}"


def test_imports_run_down_the_tiers():
  violations = tier_violations(_graph())
  assert not violations, "\n".join(violations)


def test_an_import_up_the_tiers_is_found():
  # A lower tier importing a higher one (the model table importing the predictors, a
  # trainer importing the kinds' table) fails; imports within a tier or down are fine.
  graph = {"cxr_jax.models": {"cxr_jax.inference.predictors"},
           "cxr_jax.trainers.ensemble": {"cxr_jax.registry", "cxr_jax.fits.fit",
                                         "cxr_jax.models.kinds"},
           "cxr_jax.train": {"cxr_jax.config_checks", "cxr_jax.fits.fit"}}
  assert tier_violations(graph) == [
      "cxr_jax.models (models, data) imports cxr_jax.inference.predictors (trainers, "
      "inference, fits), a higher tier",
      "cxr_jax.trainers.ensemble (trainers, inference, fits) imports cxr_jax.registry "
      "(registry, config_checks), a higher tier"]
  assert tier_of("cxr_jax.inference.predictors") == tier_of("cxr_jax.trainers")
  assert tier_of("cxr_jax.nowhere") is None


def _lab_imports() -> dict[str, set[str]]:
  modules = {**_modules(), **_modules(LAB)}
  return {m: {d for d in _imports(p, modules) if d.startswith("cxr_lab")}
          for m, p in _modules().items()}


def test_the_product_never_imports_the_lab():
  imports = _lab_imports()
  assert not {m: d for m, d in imports.items() if d}, "the product imports cxr_lab"


def test_every_product_module_serves_a_product_command():
  """A module of cxr_jax/ that no product command (launch.py, cxr_jax/tools/) reaches exists
  only for studies or benchmarks: it belongs in cxr_lab/."""
  graph = _graph()
  seen, todo = set(), [m for m in graph if m.startswith("cxr_jax.tools")]
  todo += sorted(_imports(os.path.join(REPO, "launch.py"), _modules()))
  while todo:
    m = todo.pop()
    if m not in seen:
      seen.add(m)
      todo.extend(graph.get(m, ()))
  packages = {m for m, p in _modules().items() if p.endswith("__init__.py")}
  unreached = sorted(set(graph) - seen - packages)
  assert not unreached, f"modules no product command uses (move them to cxr_lab/): {unreached}"


def test_no_import_cycle_between_modules():
  graph = _graph()
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


LONG = 350  # Lines a module may have without saying why.


def test_a_long_module_says_why_at_its_top():
  for module, path in {**_modules(), **_modules(LAB)}.items():
    source = open(path).read()
    if source.count("\n") > LONG:
      docstring = ast.get_docstring(ast.parse(source)) or ""
      assert f"Over {LONG} lines because" in docstring, f"{module} has no reason for its length"


def test_no_function_is_longer_than_sixty_lines():
  for module, path in {**_modules(), **_modules(LAB)}.items():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        assert node.end_lineno - node.lineno < 60, f"{module}.{node.name} is over 60 lines"
