"""The package layout is the pipeline: data flows one way, and no import runs back or in a circle.

Read from the source with ``ast`` (imports inside functions count too), so a shortcut that
would make a stage reach back into a later one fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

MASKD = Path(__file__).resolve().parents[1] / "maskd"

# Stage of each module: a module may import its own stage or earlier ones, never a later one.
# sources -> detectors -> classifier -> tracking -> events -> sinks; the loop and the commands
# sit on top; shared records and pure helpers at the bottom.
STAGES: list[tuple[str, ...]] = [
    ("maskd", "maskd.types", "maskd.geometry", "maskd.env", "maskd.clock", "maskd.mailbox", "maskd.lograte", "maskd.journal", "maskd.files", "maskd.watch", "maskd.images",
     "maskd.certs",
     "maskd.config", "maskd.modelfiles", "maskd.zones", "maskd.schedule", "maskd.pins"),
    ("maskd.sources", "maskd.demo"),
    ("maskd.tflite", "maskd.detectors", "maskd.motion", "maskd.night"),
    ("maskd.classifier",),
    ("maskd.tracking",),
    ("maskd.events",),
    ("maskd.pipeline",),
    ("maskd.annotate", "maskd.jsonl", "maskd.ledger", "maskd.outbox", "maskd.mqtt", "maskd.preview", "maskd.statuspage",
     "maskd.notify", "maskd.clip", "maskd.snapshots"),
    ("maskd.service",),
    ("maskd.commands", "maskd.cli", "maskd.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(MASKD.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The maskd modules ``path`` imports, anywhere in the file (``from a import b`` may name a
    submodule ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in MASKD.rglob("*.py")}
    return {name: imports(p, set(files)) - {name} for name, p in files.items()}


def stage_of(module: str) -> int:
    for i, members in enumerate(STAGES):
        if any(module == m or module.startswith(m + ".") for m in members if m != "maskd"):
            return i
    if module == "maskd":
        return 0
    raise AssertionError(f"{module} has no stage in tests/test_architecture.py: give it one")


def test_every_import_flows_downstream():
    back = [
        f"{mod} (stage {stage_of(mod)}) imports {dep} (stage {stage_of(dep)})"
        for mod, deps in sorted(graph().items())
        for dep in sorted(deps)
        if stage_of(dep) > stage_of(mod)
    ]
    assert back == []


def test_no_import_cycle():
    g = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_layout_in_the_docs_names_every_module():
    """docs/architecture.md's layout left out annotate.py, ledger.py, lograte.py, pins.py (and
    certs.py, outbox.py): a reader could not place them in the pipeline."""
    doc = (MASKD.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    layout = doc.split("```")[1]
    names = [p.name for p in sorted(MASKD.glob("*.py")) if p.stem not in ("__init__", "__main__")]
    names += [p.name + "/" for p in sorted(MASKD.iterdir()) if (p / "__init__.py").is_file()]
    assert [n for n in names if n not in layout] == []
