"""The library's shape: a core that knows no study, studies that know no other study, no import
cycle, and no import hidden inside a function without the reason for it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "irmlib"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imported_irmlib_modules(name: str, node: ast.AST, known: set[str]) -> set[str]:
    """The irmlib modules an import statement brings in (`from . import runs` names irmlib.runs)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "irmlib"}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        package = name.split(".") if name in known and (PACKAGE.parent / Path(*name.split("."))).is_dir() else name.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "irmlib":
        return set()
    found = {base}
    found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {name: set().union(*(imported_irmlib_modules(name, n, known) for n in ast.walk(tree))) - {name}
            for name, tree in trees.items()}


def is_study(name: str) -> bool:
    return name.startswith("irmlib.studies.")


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join(path + [node, nxt])}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_core_imports_no_study_and_no_study_imports_another():
    graph = import_graph()
    for name, imported in graph.items():
        studies = {m for m in imported if is_study(m)}
        if is_study(name):
            assert not studies, f"{name} imports another study: {sorted(studies)}"
        else:
            assert not studies, f"core module {name} imports the studies {sorted(studies)}"


def test_imports_inside_functions_are_third_party_and_say_why():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if getattr(node, "level", 0) or (module or "").startswith("irmlib"):
                    offenders.append(f"{where}: an irmlib import inside a function")
                    continue
                # The reason sits on the import's line, or in comments right above its block of imports.
                block = [lines[node.lineno - 1]]
                for line in reversed(lines[: node.lineno - 1]):
                    if not line.strip().startswith(("#", "import ", "from ")):
                        break
                    block.append(line)
                if not any("#" in line for line in block):
                    offenders.append(f"{where}: a lazy import without a comment saying why")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_a_cycle_and_a_core_module_importing_a_study():
    """The graph walk itself: relative imports resolve, so a cycle or a core -> study edge is seen."""
    known = {"irmlib.train", "irmlib.profile", "irmlib.studies", "irmlib.studies.mechanism"}
    relative = ast.parse("from .profile import load_profile\nfrom .studies import mechanism").body
    assert imported_irmlib_modules("irmlib.train", relative[0], known) == {"irmlib.profile"}
    assert "irmlib.studies.mechanism" in imported_irmlib_modules("irmlib.train", relative[1], known)
    up = ast.parse("from ..profile import x").body[0]
    assert imported_irmlib_modules("irmlib.studies.mechanism", up, known) == {"irmlib.profile"}
