"""The package's layers import downward only (DESIGN.md section 7): base → data → stages → job, report,
bench → cli. A module may import its own layer and those below it; every module must be placed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lancet_ds"
LAYERS = (
    ("base", {"__init__", "errors", "fileio", "console", "faults", "distributed", "fingerprint", "sampling",
              "run_dir", "run_lock", "options", "packaged", "stage_guard", "progress", "cpu_numerics"}),
    ("data", {"data", "modeling", "checkpoint_io", "logprobs", "losses", "training"}),
    ("stages", {"influence", "recall", "ibo", "evaluation", "export", "sft", "demo_world"}),
    ("top", {"job", "report", "bench", "plan"}),
    ("cli", {"cli", "__main__"}),
)


def layer_of(module: str) -> int:
    """Index in LAYERS of `lancet_ds.<top>...`."""
    top = module.split(".")[1] if "." in module else "__init__"
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not placed in any layer of tests/test_layers.py; add it to LAYERS")


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lancet_ds"):
            names = [node.module] if node.module != "lancet_ds" else \
                [f"lancet_ds.{a.name}" for a in node.names if not a.name.startswith("__")]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("lancet_ds")]
    return out


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts)


def test_every_import_points_down_or_sideways():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports(path):
            if target == "lancet_ds":
                continue
            theirs = layer_of(target)
            if theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {LAYERS[mine][0]} imports "
                              f"{LAYERS[theirs][0]} ({target})")
    assert not upward, "\n".join(upward)


def test_the_layer_table_knows_every_module():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


FIRST_IMPORT = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "lancet_ds" or m.startswith("lancet_ds.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
"""


def test_every_module_imports_first():
    """Each module imports with no other lancet_ds module loaded before it (a user's script, a launcher or a
    worker may load any of them first): no import cycle hides behind the order the CLI happens to use."""
    names = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
    proc = subprocess.run([sys.executable, "-c", FIRST_IMPORT, *names], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout
