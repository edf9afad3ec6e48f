"""The floor plan of docs/ARCHITECTURE.md, checked: rooms import only rooms below them, no cycles, stages
do not import each other (except the two that compose stages), no private names across modules."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "fcvc_pipeline"

# top to bottom; a room may import only rooms after it in this list (leaves last)
ROOMS = ["bench", "__main__", "cli", "commands", "stages", "serve", "training", "inference", "features", "evaluation",
         "captions", "models", "workdir", "devices", "artifacts", "progress", "naming", "errors"]
COMPOSING_STAGES = {"demo", "ablation"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG).with_suffix("").parts
        name = ".".join(("fcvc_pipeline",) + parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path, name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import of this package in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fcvc_pipeline"):
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("fcvc_pipeline")]
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _target(module: str, name: str, modules: dict[str, Path]) -> str:
    full = f"{module}.{name}"
    return full if full in modules else module


def test_rooms_import_only_rooms_below_them():
    modules = _modules()
    bad = []
    for mod, path in modules.items():
        src = _room(mod)
        if src not in ROOMS:
            continue
        for imported, name, line in _imports(path, mod):
            dst = _room(_target(imported, name, modules))
            if dst in ("__init__", src) or dst not in ROOMS:
                continue
            if ROOMS.index(dst) < ROOMS.index(src):
                bad.append(f"{path.relative_to(PKG)}:{line} ({src}) imports {imported} ({dst}), a room above it")
    assert not bad, "\n".join(bad)


def test_every_room_is_in_the_plan():
    rooms = {_room(m) for m in _modules()} - {"__init__"}
    assert rooms <= set(ROOMS), f"rooms missing from ROOMS and docs/ARCHITECTURE.md: {sorted(rooms - set(ROOMS))}"


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m: {_target(i, n, modules) for i, n, _ in _imports(p, m)} & set(modules) - {m} for m, p in modules.items()}
    # the package's own __init__ files are entered before their submodules; follow module edges only
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in graph[node]:
            if nxt.count(".") == 1 and (PKG / nxt.split(".")[1] / "__init__.py").is_file():
                continue  # a package __init__: importing it does not run the importer's siblings first
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for m in graph:
        if state.get(m) is None and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_stages_do_not_import_each_other():
    bad = []
    for p in (PKG / "stages").glob("*.py"):
        if p.stem in COMPOSING_STAGES or p.stem == "__init__":
            continue
        for imported, name, line in _imports(p, p.stem):
            if imported.startswith("fcvc_pipeline.stages"):
                bad.append(f"stages/{p.name}:{line} imports {imported}.{name}")
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_across_modules():
    bad = []
    for mod, path in _modules().items():
        for imported, name, line in _imports(path, mod):
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{path.relative_to(PKG)}:{line} imports {name} from {imported}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("doc", ["docs/ARCHITECTURE.md"])
def test_the_architecture_page_names_every_room(doc):
    text = (PKG.parents[1] / doc).read_text(encoding="utf-8")
    for room in ROOMS:
        if (PKG / room).is_dir():
            assert f"{room}/" in text, f"{doc} does not mention {room}/"


def test_the_default_run_is_the_default_model():
    from fcvc_pipeline.models import DEFAULT_MODEL
    from fcvc_pipeline.workdir import DEFAULT_RUN

    assert DEFAULT_RUN == DEFAULT_MODEL
