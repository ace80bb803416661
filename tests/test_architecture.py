"""The dependency order of docs/architecture.md, enforced: no import points up (or sideways between siblings).

Every ``import`` and ``from ... import`` in the package's source, at module level or inside a function, is read
with :mod:`ast` and resolved to an ``involution.*`` module; each module has a layer, and an import may only name a
module of its own subpackage or of a lower layer. The registry ``involution.backends`` names backend modules as
strings and imports them on first use: that is its job, not an import arrow, so strings are not followed.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> package it installs as (pyproject.toml's package-dir).
FOLDERS = {"involution": "involution", "reference": "involution.reference", "fast": "involution.fast",
           "conformance": "involution.conformance", "benchmarks": "involution.benchmarks"}
# Lowest first; each layer holds groups of module prefixes. A module may import its own group and lower layers,
# never a higher layer nor another group of its own layer (reference and fast are siblings).
LAYERS = [
    [("involution", "involution.spec", "involution.backends")],  # the rules, the registry, the front door
    [("involution.reference",), ("involution.fast",)],
    [("involution.torch",)],
    [("involution.conformance",)],
    [("involution.benchmarks",)],
    [("involution.commands", "involution.cli", "involution.__main__")],
]


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT)
    parts = [FOLDERS[relative.parts[0]], *relative.with_suffix("").parts[1:]]
    return ".".join(part for part in parts if part != "__init__")


def owner(module: str) -> tuple[int, tuple[str, ...]]:
    """``(layer index, group)`` of ``module``: the longest matching prefix wins."""
    matches = [(len(prefix), index, group) for index, layer in enumerate(LAYERS) for group in layer for prefix in group
               if module == prefix or module.startswith(prefix + ".")]
    _, index, group = max(matches)
    return index, group


def imported_modules(path: Path, module: str):
    """``(line, imported module)`` for every import in ``path`` that names an ``involution`` module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from involution import backends`` imports the submodule: name it, when it is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        yield from ((node.lineno, name) for name in names if name == "involution" or name.startswith("involution."))


SOURCES = sorted(path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))
MODULES = {module_name(path) for path in SOURCES}


def test_every_module_has_a_layer():
    for module in MODULES:
        owner(module)  # max() of no match raises: a module no layer claims


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_import_points_up_the_dependency_order(path):
    module = module_name(path)
    layer, group = owner(module)
    wrong = []
    for line, name in imported_modules(path, module):
        other_layer, other_group = owner(name)
        if other_layer > layer or (other_layer == layer and other_group != group):
            wrong.append(f"line {line}: {name} (layer {other_layer} {other_group})")
    assert not wrong, f"{module} (layer {layer} {group}) imports upward or sideways: {wrong}"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The walker resolves relative and function-level imports: a planted upward arrow is found."""
    fake = ROOT / "reference" / "op.py"
    source = fake.read_text() + "\n\ndef planted():\n    from ..conformance import oracle\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *args, **kwargs: source)
    found = [name for _, name in imported_modules(fake, "involution.reference.op")]
    assert "involution.conformance.oracle" in found, found
    assert owner("involution.conformance.oracle")[0] > owner("involution.reference.op")[0]


def test_import_involution_torch_loads_no_numpy_layer():
    """``import involution.torch`` (the models, the op, the loader's name) loads the rules, not the NumPy layers."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = ("import sys, involution.torch\n"
            "from involution.torch import RedNet\n"
            "RedNet(stage_blocks=(1,), stem_channels=8, base_channels=4, group_channels=4, backend='taps')\n"
            "print(' '.join(sorted(name for name in sys.modules if name.startswith('involution.reference'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    layers = {module for module in MODULES if module.startswith("involution.reference")} - {
        "involution.reference", "involution.reference.checkpoint"}
    assert not loaded & layers, f"import involution.torch loaded NumPy layer modules: {sorted(loaded & layers)}"


def test_checkpoint_and_module_do_not_import_each_other():
    imports = {module: {name for _, name in imported_modules(ROOT / "reference" / f"{module}.py",
                                                             f"involution.reference.{module}")}
               for module in ("checkpoint", "module")}
    assert not ("involution.reference.module" in imports["checkpoint"]
                and "involution.reference.checkpoint" in imports["module"]), imports
