"""The shape of the code, checked statically over every import (also those inside functions):
the core's layers import one way (envs <- worldmodel <- agent <- experiments), no core
module imports the benchmarks, and the core's module graph has no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The core's packages, lowest layer first: each may import only those before it (and itself).
LAYERS = ("envs", "worldmodel", "agent", "experiments")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (``from a import b`` counts
    as ``a.b`` when that is a module of the project, else as ``a``)."""
    tree, out = ast.parse(path.read_text(), str(path)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def core_graph() -> dict[str, set[str]]:
    files = [p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    return {m: {i for i in imports(p) if i in modules and i != m} for m, p in modules.items()}


def test_layers_import_one_way():
    bad = []
    for pkg_index, pkg in enumerate(LAYERS):
        for path in (ROOT / pkg).rglob("*.py"):
            for name in imports(path):
                top = name.split(".")[0]
                if top in LAYERS[pkg_index + 1:] or top in ("benchmarks", "research", "tests"):
                    bad.append(f"{module_name(path)} imports {name}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_core_has_no_import_cycle():
    graph = core_graph()
    state: dict[str, int] = {}      # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_cycle_and_imports_inside_functions(tmp_path):
    """The checks can fail: a function-level import is found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from agent.mpc import WorldModelMPC\n    import envs.vocab\n")
    assert {"agent.mpc", "agent.mpc.WorldModelMPC", "envs.vocab"} <= imports(src)


def test_no_script_shadows_a_package_of_the_project():
    """Scripts run as ``python benchmarks/x.py`` put their folder first on ``sys.path`` (also in
    the spawned worker processes): a module there named like one of the project's packages
    hides that package (``benchmarks/worldmodel.py`` once broke every script importing
    ``worldmodel.*``)."""
    packages = {*LAYERS, "benchmarks"}
    for folder in ("benchmarks", "experiments", "tests"):
        names = {p.stem for p in (ROOT / folder).glob("*.py")} | {p.name for p in (ROOT / folder).iterdir() if p.is_dir()}
        assert not names & packages, f"{folder}/ holds {sorted(names & packages)}: rename it"
