"""Package layout: light imports, no import cycles, no private names imported across modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saelib"
NOTEBOOK_ONLY = ("matplotlib", "ipywidgets")


@pytest.mark.parametrize("module", ["saelib", "saelib.sae", "saelib.training"])
def test_import_pulls_no_notebook_dependencies(module):
    """`import saelib.sae` works in a venv that has only torch and safetensors (e.g. for SAE Lens)."""
    code = f"import sys, {module}; print([m for m in {NOTEBOOK_ONLY} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def saelib_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every `import saelib...` / `from saelib... import ...` in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("saelib"):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("saelib")]
    return found


def test_no_private_names_imported_across_modules():
    private = [
        f"{module_name(path)} imports {name} from {module}"
        for path in PACKAGE.rglob("*.py")
        for module, names in saelib_imports(path)
        for name in names
        if name.startswith("_") and module != module_name(path)
    ]
    assert private == []


def test_no_import_cycles():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in saelib_imports(path):
            # `from saelib import x` / `from saelib.bench import timing` name submodules
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            graph[name].update(t for t in targets if t in modules and t != "saelib" and t != name)

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path and nxt > start and (found := cycle_from(start, [*path, nxt])):
                return found
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name, [name]))]
    assert cycles == []


def test_every_public_name_resolves_and_functions_survive_submodule_imports():
    """`from saelib.trainer import TrainConfig` first, then `sl.train(...)`: still the function."""
    code = (
        "import saelib as sl, saelib.trainer, saelib.training, saelib.collection\n"
        "missing = [n for n in sl.__all__ if not hasattr(sl, n)]\n"
        "print(missing, callable(sl.train), callable(sl.collect))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] True True"
