"""eval/config.py: the suite's settings live below every step, so eval/ imports without a circle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from faceanonymixer.config import ConfigError
from faceanonymixer.eval import config as ecfg

EVAL = Path(ecfg.__file__).resolve().parent


def eval_imports() -> dict[str, set[str]]:
    """module name (relative to eval/, e.g. 'evaluate', 'quality.report') -> eval modules it imports (every
    import, also those under ``if TYPE_CHECKING``)."""
    mods = {p.relative_to(EVAL).with_suffix("").as_posix().replace("/", "."): p for p in EVAL.rglob("*.py")}
    mods = {m.removesuffix(".__init__"): p for m, p in mods.items()}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod.split(".")[:-1] if path.name != "__init__.py" else mod.split(".")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                if node.level - 1 > len(pkg):
                    continue                                   # above eval/
                stem = base + (node.module.split(".") if node.module else [])
                for alias in node.names:
                    for cand in (".".join(stem + [alias.name]), ".".join(stem)):
                        if cand in mods and cand != mod:
                            deps.add(cand)
                            break
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None
    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_walker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_eval_has_no_import_circle():
    graph = eval_imports()
    assert {"evaluate", "protection", "scoring", "config", "linkage"} <= set(graph)
    assert "config" in graph["protection"] and "config" in graph["scoring"]   # the walker sees the imports
    assert find_cycle(graph) is None, f"import circle in eval/: {' -> '.join(find_cycle(graph))}"


def test_config_checks_names():
    with pytest.raises(ConfigError, match="unknown variant"):
        ecfg.load_config(overrides=["variants=[method,nope]"])
    with pytest.raises(ConfigError, match="linkage.settings"):
        ecfg.load_config(overrides=["linkage.settings=[sometimes]"])
    assert ecfg.load_config().main_variant == "method"
