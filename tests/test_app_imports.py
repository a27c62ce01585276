"""The demo package's modules import one another in one direction only (no import circles)."""
import ast
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "demo"


def demo_imports(path: Path) -> set[str]:
    """The demo modules that a module imports, anywhere in it (a lazy import inside a function counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("demo."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("demo."))
    return found - {path.stem}


def test_demo_modules_have_no_import_circle():
    graph = {p.stem: demo_imports(p) for p in DEMO.glob("*.py") if p.stem != "__init__"}
    assert "page" not in graph["handlers"]  # the circle this test was written for

    def reach(start: str, seen: set[str]) -> set[str]:
        for nxt in graph.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    circles = sorted(m for m in graph if m in reach(m, set()))
    assert not circles, f"demo modules in an import circle: {circles} ({graph})"
