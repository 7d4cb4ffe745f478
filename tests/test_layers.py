"""The layer rule of docs/ARCHITECTURE.md, read off every module's imports (no import runs).

Every ``import`` and ``from ... import`` in ``seqscale/``, ``experiments/`` and ``forks/`` is
parsed with ``ast``, function-level and ``TYPE_CHECKING`` imports included, and checked for:

- a lower layer importing a higher one (``ALLOWED`` below is the rule);
- one module using another module's private name: ``from x import _y``, or ``x._y`` where
  ``x`` is a seqscale module bound by an import. A private *module* ``pkg/_m.py`` is private
  to its package: modules inside ``pkg`` may import it, others may not;
- one module reaching into another's objects: ``obj._y`` (``obj`` not ``self``/``cls``) where
  ``_y`` is not defined in this module but is defined in another repository module (a
  private method or attribute of a class that module owns);
- a library module launching an entry point (an ``"experiments.<name>"`` string in
  ``seqscale/``): the library is called by the entry points, never the other way round.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("seqscale", "experiments", "forks")

# Which layers each layer may import (its own included). Dependencies point down only:
#   experiments -> studies -> train -> analysis | parallel -> data -> models -> ops,
# and `base` (seqscale/__init__.py, seqscale/outputs.py, seqscale/checks.py,
# seqscale/registry.py) is usable from
# every layer and imports no other seqscale module. analysis and parallel sit side by side
# and do not import each other. forks sit beside experiments: they add models to the
# registry and may use any library layer.
_BELOW = {
    "ops": (),
    "models": ("ops",),
    "data": ("models", "ops"),
    "analysis": ("data", "models", "ops"),
    "parallel": ("data", "models", "ops"),
    "train": ("analysis", "parallel", "data", "models", "ops"),
    "studies": ("train", "analysis", "parallel", "data", "models", "ops"),
    "experiments": ("studies", "train", "analysis", "parallel", "data", "models", "ops"),
    "forks": ("studies", "train", "analysis", "parallel", "data", "models", "ops"),
}
ALLOWED = {layer: {layer, "base", *below} for layer, below in _BELOW.items()}
ALLOWED["base"] = {"base"}

# Known violations, each to be fixed in the code and then removed from here (a stale entry
# fails test_allow_list_is_not_stale). Keys: (importer module, what it uses).
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}  # none left; a new entry needs a reason


@dataclasses.dataclass(frozen=True)
class Finding:
  importer: str
  target: str
  where: str  # path:line
  why: str

  def __str__(self) -> str:
    return f"{self.where}: {self.importer} -> {self.target}: {self.why}"


def _modules() -> dict[str, str]:
  """Module name -> path of every .py file under SCANNED."""
  found = {}
  for top in SCANNED:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
      for f in sorted(filenames):
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
          if rel[-1] == "__init__":
            rel = rel[:-1]
          found[".".join(rel)] = os.path.join(dirpath, f)
  return found


MODULES = _modules()


def layer_of(module: str) -> str | None:
  """The layer of a module name inside the repository; None for anything outside it."""
  parts = module.split(".")
  if parts[0] in ("experiments", "forks"):
    return parts[0]
  if parts[0] != "seqscale":
    return None
  if len(parts) == 1 or parts[1] in ("outputs", "checks", "registry"):
    return "base"
  return parts[1] if parts[1] in _BELOW else f"unknown:{parts[1]}"


def _is_private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_of(module: str) -> str:
  path = MODULES[module]
  return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def _private_ok(importer: str, owner: str, name: str) -> bool:
  """May ``importer`` use ``owner._name``? A private module is private to its package; a
  private name to its module."""
  if f"{owner}.{name}" in MODULES:
    return importer == owner or importer.startswith(owner + ".")
  return importer == owner


def _resolve_from(importer: str, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  base = _package_of(importer).split(".")
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _defined(tree: ast.AST) -> set[str]:
  """Every name a module defines: functions, classes, methods, assigned names and attributes,
  arguments and keywords (a keyword names a parameter defined elsewhere, never a private)."""
  names = set()
  for n in ast.walk(tree):
    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(n.name)
    elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
      names.add(n.id)
    elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
      names.add(n.attr)
    elif isinstance(n, ast.arg):
      names.add(n.arg)
  return names


def _private_owners() -> dict[str, list[str]]:
  """Private name -> the repository modules that define it."""
  owners: dict[str, list[str]] = {}
  for module, path in sorted(MODULES.items()):
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for name in _defined(tree):
      if _is_private(name):
        owners.setdefault(name, []).append(module)
  return owners


PRIVATE_OWNERS = _private_owners()


def _dotted(node: ast.AST) -> list[str] | None:
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    return [node.id] + parts[::-1]
  return None


def findings_of(module: str) -> list[Finding]:
  """Every layer, privacy and entry-point finding in one module."""
  path = MODULES[module]
  rel = os.path.relpath(path, ROOT)
  tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
  layer = layer_of(module)
  out: list[Finding] = []
  bound: dict[str, str] = {}  # local name -> repository module it is bound to

  def use(target: str, lineno: int) -> None:
    target_layer = layer_of(target)
    if target_layer is None or layer is None:
      return
    if target_layer not in ALLOWED.get(layer, set()):
      out.append(Finding(module, target, f"{rel}:{lineno}",
                         f"layer {layer} may not import layer {target_layer}"))

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        use(alias.name, node.lineno)
        if layer_of(alias.name) is not None:
          if alias.asname:
            bound[alias.asname] = alias.name
          else:
            bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
      owner = _resolve_from(module, node)
      if layer_of(owner) is None:
        continue
      for alias in node.names:
        sub = f"{owner}.{alias.name}"
        target = sub if sub in MODULES else owner
        use(target, node.lineno)
        if sub in MODULES:
          bound[alias.asname or alias.name] = sub
        if _is_private(alias.name) and not _private_ok(module, owner, alias.name):
          out.append(Finding(module, sub, f"{rel}:{node.lineno}",
                             f"imports the private name {alias.name} of {owner}"))

  defined = _defined(tree)
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _is_private(node.attr):
      chain = _dotted(node.value)
      if chain and chain[0] in bound:  # module._name
        owner = ".".join([bound[chain[0]]] + chain[1:])
        if owner in MODULES and not _private_ok(module, owner, node.attr):
          out.append(Finding(module, f"{owner}.{node.attr}", f"{rel}:{node.lineno}",
                             f"uses the private name {node.attr} of {owner}"))
      elif (not (chain and chain[0] in ("self", "cls")) and node.attr not in defined
            and node.attr in PRIVATE_OWNERS):  # obj._name, defined by another module
        owner = ",".join(PRIVATE_OWNERS[node.attr])
        out.append(Finding(module, f"{owner}.{node.attr}", f"{rel}:{node.lineno}",
                           f"reaches into {node.attr}, private to {owner}"))
    if (layer not in ("experiments", "forks") and isinstance(node, ast.Constant)
        and isinstance(node.value, str) and re.fullmatch(r"experiments\.\w+", node.value)):
      out.append(Finding(module, "experiments.*", f"{rel}:{node.lineno}",
                         f"a library module names the entry point {node.value!r}"))
  return out


def _all_findings() -> list[Finding]:
  return [f for m in sorted(MODULES) for f in findings_of(m)]


def test_every_module_has_a_layer():
  unknown = sorted(m for m in MODULES if (layer_of(m) or "").startswith("unknown"))
  assert not unknown, (f"modules in no layer: {unknown}; add their folder to the rule in "
                       "tests/test_layers.py and docs/ARCHITECTURE.md")


def test_no_lower_layer_imports_a_higher_one_and_no_private_access():
  new = [f for f in _all_findings() if (f.importer, f.target) not in KNOWN_VIOLATIONS]
  assert not new, "layer rule broken (docs/ARCHITECTURE.md):\n" + "\n".join(map(str, new))


def test_allow_list_is_not_stale():
  seen = {(f.importer, f.target) for f in _all_findings()}
  stale = sorted(set(KNOWN_VIOLATIONS) - seen)
  assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {stale}"


# The checker itself must catch what it claims to catch.
@pytest.mark.parametrize("importer,source,expected", [
    ("seqscale.ops.attention", "from seqscale.models import transformer\n", "layer ops"),
    ("seqscale.models.transformer", "def f():\n  from seqscale.train import step\n",
     "layer models"),
    ("seqscale.train.step", "import seqscale.studies.bench as b\n", "layer train"),
    ("seqscale.analysis.cost", "from seqscale.parallel import mesh\n", "layer analysis"),
    ("seqscale.outputs", "from seqscale.ops import attention\n", "layer base"),
    ("seqscale.studies.overview", "from seqscale.studies.running_sum import _cell\n",
     "private name _cell"),
    ("seqscale.studies.overview", "from seqscale.studies import running_sum\n"
     "running_sum._cell()\n", "private name _cell"),
    ("seqscale.studies.table1", "import seqscale.analysis\nseqscale.analysis._jaxpr.walk\n",
     "private name _jaxpr"),
    ("seqscale.studies.pictures", "def f(model):\n  return model.layers[0]._pre(1)\n",
     "private to seqscale.models.transformer"),
    ("seqscale.studies.table1", "import subprocess\nsubprocess.run(['experiments.bench'])\n"
     "x = 'experiments.bench'\n", "entry point"),
])
def test_checker_catches(tmp_path, monkeypatch, importer, source, expected):
  path = tmp_path / "m.py"
  path.write_text(source)
  monkeypatch.setitem(MODULES, importer, str(path))
  found = findings_of(importer)
  assert any(expected in str(f) for f in found), found


@pytest.mark.parametrize("importer,source", [
    ("seqscale.analysis.depth", "from seqscale.analysis import _jaxpr\n"),  # its own package
    ("seqscale.models.transformer", "from seqscale.checks import check_int\n"),
    ("seqscale.ops.attention", "import seqscale.outputs\n"),
    ("seqscale.studies.overview", "from seqscale.train import trainer\nfrom seqscale import ops\n"),
    ("experiments.train", "from seqscale.studies import bench\nx = 'experiments.bench'\n"),
    ("seqscale.models.moe", "from seqscale.models import transformer\ntransformer.__name__\n"),
    ("seqscale.models.moe", "class A:\n  def _pre(self):\n    return other._pre()\n"),  # own

])
def test_checker_accepts(tmp_path, monkeypatch, importer, source):
  path = tmp_path / "m.py"
  path.write_text(source)
  monkeypatch.setitem(MODULES, importer, str(path))
  assert findings_of(importer) == []
