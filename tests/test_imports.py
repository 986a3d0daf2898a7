"""No import cycles in research/: every import counts, top-level and inside functions.

The graph is read from the source with `ast` (nothing is imported): an edge
a -> b for each `import b` / `from b import x` in module a, where `from
research.pkg import mod` names the submodule `research.pkg.mod` when it is one.
A package's `__init__` is the package's module (`from research import models`
names it), and importing `research.pkg.mod` from outside `research.pkg` imports
`research.pkg` too (its `__init__` runs first).

An import inside a function says why it is there: a comment on its line or on the
line directly above (consecutive imports share the comment above the first).
"""

from __future__ import annotations

import ast
import io
import os
import textwrap
import tokenize

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "research")


def _modules(root: str = ROOT) -> dict[str, str]:
    """Module name -> file, for every .py under `root` (a package is its __init__)."""
    found = {}
    top = os.path.dirname(root)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, top)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The research modules `module` imports, anywhere in its file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import research.a.b.c` -> the module part
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
                out.update(_packages_entered(module, name, modules))
    out.discard(module)
    return out


def _packages_entered(module: str, name: str, modules: dict[str, str]) -> set[str]:
    """The packages whose `__init__` runs when `module` imports `name`: each package above
    `name` (below `research` itself) that `module` is not inside of. From inside, the
    package is already being imported and its `__init__` is not run again."""
    parts = name.split(".")
    packages = {".".join(parts[:i]) for i in range(2, len(parts))}
    return {p for p in packages if p in modules and not module.startswith(p + ".")}


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
    """Module -> the research modules it imports."""
    modules = _modules(root)
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_reads_top_level_and_function_local_imports(tmp_path):
    pkg = tmp_path / "research"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from research.sub import b\n")
    (pkg / "a.py").write_text("import os\nfrom research.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from research import a\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("")
    graph = import_graph(str(pkg))
    assert graph["research.a"] == {"research.sub.b", "research.sub"}  # sub's __init__ too
    assert graph["research.sub.b"] == {"research.a", "research.sub.c"}
    assert graph["research.sub"] == {"research.sub.b"}
    assert graph["research"] == set()
    assert find_cycle(graph) == ["research.a", "research.sub", "research.sub.b", "research.a"]


def test_graph_counts_the_package_init_an_import_from_outside_runs(tmp_path):
    # research.x imports research.p.m, so research.p's __init__ runs first; it imports
    # research.p.q, which imports research.x back: a cycle that no two files show.
    pkg = tmp_path / "research"
    (pkg / "p").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "p" / "__init__.py").write_text("from research.p import q\n")
    (pkg / "p" / "m.py").write_text("from research.p import q\n")  # inside: no edge to p
    (pkg / "p" / "q.py").write_text("def f():\n    from research import x\n")
    (pkg / "x.py").write_text("from research.p import m\n")
    graph = import_graph(str(pkg))
    assert graph["research.x"] == {"research.p.m", "research.p"}
    assert graph["research.p.m"] == {"research.p.q"}
    assert find_cycle(graph) == ["research.p", "research.p.q", "research.x", "research.p"]


def test_research_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "research.train.loop" in graph  # the tree was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _comments(source: str) -> tuple[set[int], set[int]]:
    """Lines holding a comment, and lines that are only a comment."""
    anywhere, alone = set(), set()
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            anywhere.add(row)
            if lines[row - 1].lstrip().startswith("#"):
                alone.add(row)
    return anywhere, alone


def unexplained_late_imports(path: str) -> list[int]:
    """Lines of the imports inside functions of `path` that no comment explains.

    An import is explained by a comment on one of its lines or on the line directly
    above it; each import of a run (consecutive import statements of one block, blank
    lines between them allowed) is explained by an explained import before it.
    """
    with open(path) as f:
        source = f.read()
    anywhere, alone = _comments(source)

    def own(node) -> bool:
        lines = range(node.lineno, node.end_lineno + 1)
        return node.lineno - 1 in alone or any(row in anywhere for row in lines)

    found = []

    def visit(node, in_function: bool) -> None:
        in_function = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list) or not in_function:
                continue
            explained = False  # by an import just before, in the same run
            for statement in block:
                if isinstance(statement, ast.Import | ast.ImportFrom):
                    explained = explained or own(statement)
                    if not explained:
                        found.append(statement.lineno)
                else:
                    explained = False
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(ast.parse(source, path), False)
    return sorted(found)


def test_late_import_checker_needs_a_comment_per_run(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        textwrap.dedent(
            """\
            import os  # the top level needs no comment


            def explained():
                # heavy: why the run of three below is here
                import json
                import re

                from collections import abc
                x = 1
                import sys  # optional: its own comment
                return x


            def unexplained():
                \"""A docstring is not a comment (#).\"""
                import glob
                if True:
                    import io
                return "#" + glob.__name__
            """
        )
    )
    lines = module.read_text().splitlines()
    assert [lines[i - 1].strip() for i in unexplained_late_imports(str(module))] == [
        "import glob",
        "import io",
    ]


def test_every_late_import_in_research_says_why():
    top = os.path.dirname(ROOT)
    found = []
    for path in sorted(_modules().values()):
        name = os.path.relpath(path, top).replace(os.sep, "/")
        found += [f"{name}:{line}" for line in unexplained_late_imports(path)]
    assert not found, (
        "imports inside functions with no comment saying why (on the line or just above; "
        "hoist them to the top where no cycle or heavy import follows):\n" + "\n".join(found)
    )
