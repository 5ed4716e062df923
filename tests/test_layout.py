"""The package's layout holds: every module imports, nothing imports in a cycle, data flows one way.

retrieval/  the frozen retriever and its corpus (imports nothing of rewriting/ or training/)
rewriting/  the rewriter (imports nothing of retrieval/ or training/); its remote code only its own siblings
training/   arguments, reward, trainer, stages (imports the parts above; nothing but the CLI imports it)
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grape_hf"


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "assets" not in path.parts}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str) -> set[str]:
    """The grape_hf modules `name` imports, at module level or inside functions (`if TYPE_CHECKING:` left out)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found, stack = set(), [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found |= {t for t in (target, *(f"{target}.{a.name}" for a in node.names)) if t in MODULES}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
    return found - {name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_cycle():
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        path.append(name)
        for target in sorted(GRAPH[name]):
            visit(target)
        path.pop()
        done.add(name)

    for name in MODULES:
        visit(name)


# part -> the parts it must not import (the top-level modules are `data`, `metrics`, `models`, `evaluation`, `hub`...)
FORBIDDEN = {
    "grape_hf.retrieval": ("grape_hf.rewriting", "grape_hf.training", "grape_hf.evaluation", "grape_hf.hub"),
    "grape_hf.rewriting": ("grape_hf.retrieval", "grape_hf.training", "grape_hf.evaluation", "grape_hf.hub"),
    "grape_hf.shapes": ("grape_hf.retrieval", "grape_hf.rewriting", "grape_hf.training"),
    "grape_hf.evaluation": ("grape_hf.training",),
    "grape_hf.hub": ("grape_hf.training", "grape_hf.retrieval"),
    "grape_hf.metrics": ("grape_hf.",),
    "grape_hf.models": ("grape_hf.",),
    "grape_hf.gguf_tokenizer": ("grape_hf.",),
    "grape_hf.data": (
        "grape_hf.retrieval",
        "grape_hf.rewriting",
        "grape_hf.training",
        "grape_hf.shapes",
        "grape_hf.evaluation",
        "grape_hf.hub",
        "grape_hf.models",
        "grape_hf.metrics",
    ),
}
# What a leaf part may still import: the offline model table rebuilds a GGUF's tokenizer with its own leaf module.
ALLOWED = {"grape_hf.models": ("grape_hf.gguf_tokenizer",)}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_data_flows_one_way(part):
    forbidden = FORBIDDEN[part]
    for name, targets in GRAPH.items():
        if name == part or name.startswith(part + "."):
            wrong = sorted(t for t in targets if t.startswith(forbidden) and t not in ALLOWED.get(part, ()))
            assert not wrong, f"{name} imports {wrong}, above it in the flow"


def test_only_the_cli_and_the_root_reach_into_training():
    for name, targets in GRAPH.items():
        if not name.startswith("grape_hf.training") and name not in ("grape_hf.cli", "grape_hf"):
            assert not [t for t in targets if t.startswith("grape_hf.training")], name


def test_remote_code_is_self_contained():
    """What a saved folder ships imports nothing of grape_hf but the other shipped files (flat, relative)."""
    from grape_hf.rewriting.saving import remote_code_files

    shipped = {_module_name(source) for source in remote_code_files().values()}
    for name in shipped:
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and f"{name.rpartition('.')[0]}.{node.module}" in shipped, (
                    f"{name} imports .{node.module}, which a saved folder does not hold"
                )
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m.startswith("grape_hf") for m in modules), f"{name} imports {modules}"


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(MODULES)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    run = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
