"""Structure rules of issue 11, checked on the source: short functions, no import cycles."""

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "torchrec_me"
MAX_FUNCTION_LINES = 60


def _modules() -> Dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return out


def _body_lines(fn: ast.AST) -> int:
    """Lines of a function without its docstring."""
    body = fn.body  # type: ignore[attr-defined]
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        if len(body) == 1:
            return 0
        first = body[1]
    return fn.end_lineno - first.lineno + 1  # type: ignore[attr-defined]


def test_no_function_longer_than_60_lines() -> None:
    long = [
        f"{name}.{node.name}: {_body_lines(node)} lines"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, long


def _imports(name: str, tree: ast.Module, known: Set[str]) -> Set[str]:
    """torchrec_me modules that ``name`` imports anywhere (function bodies included)."""
    found: Set[str] = set()
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file() else name.rpartition(".")[0]
    for node in ast.walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from P import sub`` imports P.sub (P itself, the parent, is implicit);
            # ``from P import name`` imports P.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_no_import_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {n: _imports(n, t, known) for n, t in modules.items()}
    cycle = _cycle(graph)
    assert not cycle, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
