"""The package's shape: imports go down the floors, no two top-level packages import each other,
the ground floor (common, errors) imports nothing above it, and no module outgrows 600 lines."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megactllm"
MAX_LINES = 600
# The bottom floor: what each may import of megactllm's (C extensions are leaves).
GROUND = {"errors": set(), "common": {"common", "errors"}}


def _imported_units(path: Path, package: Path) -> set:
    """Top-level units of `package` that the module at `path` imports anywhere (functions included)."""
    name = package.name
    rel = path.relative_to(package).with_suffix("").parts
    here = rel[:-1]  # the module's own package (an __init__ is its package's)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                targets = [[name, *base, *(node.module.split(".") if node.module else [])]]
            else:
                targets = [(node.module or "").split(".")]
            if targets[0] == [name]:  # from megactllm import x: x is the unit
                targets = [[name, alias.name] for alias in node.names]
        else:
            continue
        for parts in targets:
            if parts[0] == name and len(parts) > 1 and not parts[1].startswith("_"):
                found.add(parts[1])
    return found


def import_graph(package: Path) -> dict:
    """unit -> units it imports (itself left out)."""
    graph: dict = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("").parts
        if rel == ("__init__",):
            continue
        unit = rel[0]  # a subpackage, or a top-level module such as errors
        graph.setdefault(unit, set()).update(_imported_units(path, package) - {unit})
    return graph


def mutual_pairs(graph: dict) -> list:
    return sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))


def test_the_checker_sees_a_mutual_import_inside_a_function(tmp_path):
    pkg = tmp_path / "megactllm"
    (pkg / "alpha").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "alpha" / "__init__.py").write_text("from .inner import x\n")
    (pkg / "alpha" / "inner.py").write_text("def f():\n    from megactllm import beta\n")
    (pkg / "beta.py").write_text("from megactllm.alpha.inner import f\nfrom megactllm import _ext\n")
    assert import_graph(pkg) == {"alpha": {"beta"}, "beta": {"alpha"}}
    assert mutual_pairs(import_graph(pkg)) == [("alpha", "beta")]


def test_no_two_top_level_packages_import_each_other():
    assert mutual_pairs(import_graph(PACKAGE)) == []


def test_the_ground_floor_imports_nothing_above_it():
    graph = import_graph(PACKAGE)
    for unit, allowed in GROUND.items():
        assert graph.get(unit, set()) - allowed == set(), f"megactllm.{unit} imports {sorted(graph[unit] - allowed)}"


def test_no_module_over_600_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_production_code_never_imports_the_test_helpers():
    graph = import_graph(PACKAGE)
    assert {unit for unit, imported in graph.items() if unit != "testing" and "testing" in imported} == set()
