"""The package's structure, read from its source: no import circle (function-level imports count), every module
in a layer of docs/ARCHITECTURE.md importing only its own layer and those below, and nothing in matchnet/ that
reaches for the app, the CLI or the benchmarks."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "matchnet"

# docs/ARCHITECTURE.md's layers, bottom first. A module (or a package: every module under it) may import its own
# layer and the layers below. A new module belongs in one of them: add it here and in docs/ARCHITECTURE.md.
LAYERS = [
    ("the hardware", {"matchnet.cpu"}),
    ("writing files", {"matchnet.atomic"}),
    ("data", {"matchnet.data"}),  # every module under matchnet/data/ (omniglot, lake_runs, ...)
    ("input rules", {"matchnet.inputs"}),
    ("episodes", {"matchnet.episodes"}),
    ("model", {"matchnet.model"}),
    ("loss and metrics", {"matchnet.evaluate"}),
    ("checkpoints, cards, the Hub", {"matchnet.checkpoint", "matchnet.results", "matchnet.card", "matchnet.hub"}),
    ("the training loop", {"matchnet.config", "matchnet.engine", "matchnet.distributed", "matchnet.rundir",
                           "matchnet.resume", "matchnet.divergence"}),
    ("tasks and tools", {"matchnet.inference", "matchnet.augment", "matchnet.alphabets", "matchnet.train",
                         "matchnet.baselines", "matchnet.language", "matchnet.predict"}),
    ("tasks built on tasks", {"matchnet.imagenet"}),
    ("the package's face", {"matchnet"}),
]
OUTSIDE = {"app", "demo", "train", "bench", "tests", "conftest"}  # above the library: never imported by it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> tuple[set[str], set[str]]:
    """(the matchnet modules `name` imports anywhere in its file, the top-level names of other imports)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [(module, [a.name for a in node.names])]
        else:
            continue
        for module, names in targets:
            if module.split(".")[0] != "matchnet":
                other.add(module.split(".")[0])
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]  # from . import episodes
            found.update(subs or [module])
    found = {m for m in found if m in MODULES}
    # Importing matchnet.data.fewshot runs matchnet/data/__init__.py first: from outside a subpackage, that is an
    # import of the subpackage too (the top-level matchnet/__init__.py, the package's face, is left out: it
    # imports the public names and every module would otherwise "import" it).
    for target in list(found):
        parent = target.rsplit(".", 1)[0]
        if parent != "matchnet" and parent in MODULES and not name.startswith(parent):
            found.add(parent)
    found.discard(name)
    return found, other


GRAPH = {name: imports(name)[0] for name in MODULES}


def layer(name: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS here and to docs/ARCHITECTURE.md")


def test_the_package_has_no_import_circle():
    order, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            loop = path[path.index(name):] + [name]
            raise AssertionError("import circle: " + " -> ".join(loop))
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            visit(target, path + [name])
        state[name] = "done"
        order.append(name)
    for name in sorted(GRAPH):
        visit(name, [])
    assert len(order) == len(GRAPH)


def test_every_import_goes_down_the_layers():
    upward = [f"{name} ({LAYERS[layer(name)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
              for name in sorted(GRAPH) for target in sorted(GRAPH[name]) if layer(target) > layer(name)]
    assert upward == []


def test_data_and_the_model_stand_on_their_own():
    """The bottom of the flow: data imports nothing of matchnet but matchnet.atomic, the model nothing at all."""
    for name in MODULES:
        if name.startswith("matchnet.data"):
            assert {t for t in GRAPH[name] if not t.startswith("matchnet.data")} <= {"matchnet.atomic"}, name
    assert GRAPH["matchnet.model"] == set()
    assert "huggingface_hub" not in imports("matchnet.model")[1]  # the Hub mixin lives in hub.py


def test_the_library_never_imports_the_app_the_cli_or_the_benchmarks():
    reaching = {name: imports(name)[1] & OUTSIDE for name in MODULES}
    assert {k: v for k, v in reaching.items() if v} == {}


def test_every_module_imports_alone_in_dependency_order():
    """A fresh interpreter imports each module after the ones it depends on: no import works only by luck of
    what an earlier test imported."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for target in sorted(GRAPH[name]):
                visit(target)
            order.append(name)
    for name in sorted(GRAPH):
        visit(name)
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    done = subprocess.run([sys.executable, "-c", script, *order], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
