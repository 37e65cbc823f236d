"""Architecture facts from the code's own imports (``ast``, nothing is imported): package boundaries and no
import cycle among the project's modules under common/, client/, server/ and simulation/.

Every import statement counts, also the ones inside functions (a lazy import still ties two modules).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES: tuple[str, ...] = ("common", "client", "server", "simulation")


#: (importing package, forbidden top-level package): client and server never import each other; common is
#: Flower-free.
FORBIDDEN: tuple[tuple[str, str], ...] = (("client", "server"), ("server", "client"), ("common", "flwr"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@lru_cache(maxsize=1)
def project_modules() -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` under :data:`PACKAGES`."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """Absolute module named by a (possibly relative) ``from ... import``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement in ``path`` names (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (self-imports dropped)."""
    mods = project_modules()
    return {m: {n for n in imported_names(m, p) if n in mods and n != m} for m, p in mods.items()}


def boundary_violations() -> set[str]:
    """``"<module> imports <package>"`` for every import across a :data:`FORBIDDEN` boundary."""
    out: set[str] = set()
    for module, path in project_modules().items():
        tops = {n.split(".")[0] for n in imported_names(module, path)}
        out |= {f"{module} imports {bad}" for src, bad in FORBIDDEN if module.split(".")[0] == src and bad in tops}
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def cycle_violations() -> set[str]:
    """``"import cycle: a -> b -> c"`` (modules of one strongly connected component, sorted)."""
    return {"import cycle: " + " -> ".join(c) for c in strongly_connected(import_graph())}


# ---------------------------------------------------------------- tests


def test_graph_covers_the_project() -> None:
    mods = project_modules()
    assert {"common.metrics", "client.app", "server.app", "simulation.run"} <= set(mods)
    assert "common.metrics_counts" in import_graph()["common.metrics"]  # a real edge is seen


def test_client_and_server_never_import_each_other_and_common_is_flower_free() -> None:
    new = sorted(boundary_violations())
    assert not new, "forbidden imports (client<->server, common->flwr):\n  " + "\n  ".join(new)


def test_no_import_cycle_among_project_modules() -> None:
    new = sorted(cycle_violations())
    assert not new, "import cycles among project modules:\n  " + "\n  ".join(new)


def test_checks_detect_planted_violations() -> None:
    """The cycle finder and the boundary rule on a hand-made graph / source (they can fail)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from server.aggregation import x\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _absolute(node, "client.task", False) == "server.aggregation"
    rel = ast.parse("from .config import X\n").body[0]
    assert isinstance(rel, ast.ImportFrom)
    assert _absolute(rel, "common.models.fusion", False) == "common.models.config"
    assert _absolute(rel, "common.models", True) == "common.models.config"
