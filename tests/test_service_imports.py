"""What service/ imports: no import circles between its modules (each can be imported alone,
in any order), and no torch."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: str) -> set[str]:
    """The modules of `package` that a file imports, anywhere in it (in a function, or under
    TYPE_CHECKING, too: a circle hidden there is still a circle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == package}
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in imports_of(path, package) if m in files and m != name}
            for name, path in files.items()}


def test_service_has_no_import_circles():
    graph = import_graph("service")
    assert {"service.app", "service.state", "service.api.inference"} <= set(graph)
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a circle
    assert order.index("service.state") < order.index("service.app")


def test_service_imports_no_torch():
    code = ("import sys, service.app, service.api.inference, service.__main__; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'skimage' not in sys.modules, 'skimage imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
