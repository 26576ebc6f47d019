"""The package's shape: no import cycle, layers enforced and complete, modules of readable size, a light client.

The graph is grimp's (the one import-linter checks), which includes function-local imports, so a cycle hidden
inside a function body still counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

grimp = pytest.importorskip("grimp")

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "swinv2_serve"
MAX_LINES = 500
LONG_REASON = "Over 500 lines because"  # a longer module says why in its docstring, with this phrase


@pytest.fixture(scope="module")
def graph():  # noqa: ANN201
    return grimp.build_graph(PACKAGE, cache_dir=None)  # no cache: always the tree as it is now


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit on deep chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycle_in(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One concrete import loop inside a strongly connected component, for the failure message."""
    members = set(component)
    path = [component[0]]
    seen = {component[0]: 0}
    while True:
        nxt = sorted(edges[path[-1]] & members)[0]
        if nxt in seen:
            return path[seen[nxt]:] + [nxt]
        seen[nxt] = len(path)
        path.append(nxt)


def test_tarjan_finds_a_planted_cycle() -> None:  # the checker itself can fail
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    components = strongly_connected(set(edges), edges)
    assert sorted(components) == [["a", "b", "c"], ["d"], ["e"]]
    assert _cycle_in(["a", "b", "c"], edges) == ["a", "b", "c", "a"]


def test_grimp_sees_a_cycle_hidden_in_a_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "looped"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def late():\n    from . import high  # a cycle dodged at import time\n")
    (package / "high.py").write_text("from . import low\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    looped = grimp.build_graph("looped", cache_dir=None)
    edges = {m: set(looped.find_modules_directly_imported_by(m)) for m in looped.modules}
    assert [c for c in strongly_connected(set(edges), edges) if len(c) > 1] == [["looped.high", "looped.low"]]


def test_import_graph_has_no_cycle(graph) -> None:  # noqa: ANN001
    nodes = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & nodes for m in nodes}
    cycles = [c for c in strongly_connected(nodes, edges) if len(c) > 1]
    loops = ["\n  " + " -> ".join(_cycle_in(c, edges)) + f"\n  (component of {len(c)}: {', '.join(c)})"
             for c in cycles]
    assert not cycles, "import cycles in swinv2_serve (function-local imports included):" + "".join(loops)


def _layer_modules() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = [c for c in config["contracts"] if c["type"] == "layers"]
    assert contracts, "pyproject.toml has no import-linter layers contract"
    modules = []
    for contract in contracts:
        containers = contract.get("containers", [""])
        for layer in contract["layers"]:
            for name in layer.replace(":", "|").split("|"):
                name = name.strip().strip("()").strip()  # "(pkg.mod)": an optional layer
                modules += [f"{c}.{name}" if c else name for c in containers]
    return modules


def test_every_module_sits_in_a_layer(graph) -> None:  # noqa: ANN001
    layers = _layer_modules()
    unplaced = [m for m in sorted(graph.modules)
                if m != PACKAGE and not any(m == layer or m.startswith(layer + ".") for layer in layers)]
    # the root package is the container of the layers (its __init__ imports config lazily), not a layer
    assert not unplaced, f"modules in no layer of pyproject.toml's layers contract: {unplaced}; place each one"


def test_lint_imports_passes() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter not installed (pip install -e '.[dev]')")
    out = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def test_no_module_is_long_without_a_reason() -> None:
    files = sorted((REPO / PACKAGE).rglob("*.py"))
    assert len(files) > 20
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    unexplained = {path: n for path, n in long.items() if LONG_REASON not in _docstring(REPO / path)}
    assert not unexplained, (f"modules over {MAX_LINES} lines whose docstring does not say why "
                             f"(\"{LONG_REASON} ...\"): {unexplained}")


def _imported_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _within(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_client_imports_no_framework_and_no_runtime() -> None:
    modules = _imported_by("import swinv2_serve.client")
    assert "swinv2_serve.client" in modules  # the probe saw the import it checks
    heavy = _within(modules, ("torch", "onnxruntime", "openvino", "swinv2_serve.runtime"))
    assert not heavy, f"import swinv2_serve.client pulls in {heavy}"


def test_server_imports_no_torch() -> None:
    modules = _imported_by("import swinv2_serve.server")
    assert "swinv2_serve.server" in modules
    assert not _within(modules, ("torch",)), "import swinv2_serve.server pulls in torch"
