"""`pip install saelib` outside a checkout: the wheel holds every module, the concept file and the
dependencies, and the installed package finds its concept file through importlib.resources."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_holds_the_package_its_data_and_dependencies(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "saelib", source / "saelib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("saelib-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        archive.extractall(tmp_path / "site")
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "saelib").rglob("*.py")}
    assert modules | {"saelib/data/concepts.jsonl"} <= names
    requires = set(re.findall(r"^Requires-Dist: ([\w.-]+)", metadata, flags=re.MULTILINE))
    assert {"torch", "transformers", "safetensors", "huggingface_hub", "matplotlib", "ipywidgets"} <= requires

    code = (
        "from saelib.corpus import concepts_path, load_concepts\nprint(concepts_path(), len(load_concepts()))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("SAELIB_CONCEPTS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    path, count = out.stdout.split()
    assert path.startswith(str(tmp_path / "site")) and int(count) > 100
