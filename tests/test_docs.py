"""The documentation is checked against the repository it describes.

  * Every relative link and `#anchor` in README.md and docs/*.md resolves: the
    file exists, and the anchor is a heading of it under GitHub's slug rules.
  * Every repository path named in backticks or in a fenced command
    (`research/...`, `scripts/...`, `experiments/...`, `tests/...`, `docs/...`)
    exists.
  * docs/architecture.md's package table lists exactly the packages of research/
    and, for each, exactly the other packages it imports: found by `ast` in every
    module, top-level imports and imports inside functions alike.

Each checker is also run on a small bad example, so that a checker that finds
nothing cannot pass for one that checks.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PATH_PREFIXES = ("research/", "scripts/", "experiments/", "tests/", "docs/")
ARCHITECTURE_HEADING = "Package dependencies"

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_PATH_TOKEN = re.compile(r"[\w./-]+")


def doc_files(root: Path = REPO_ROOT) -> list[Path]:
    """README.md and every docs/*.md page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _split_fences(text: str) -> tuple[list[str], list[str]]:
    """(lines outside fenced code blocks, lines inside them)."""
    prose, code, in_fence = [], [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        (code if in_fence else prose).append(line)
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: its rendered text lowercased, every
    character but letters, digits, `_`, `-` and spaces dropped, spaces made `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_, not snake_case
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a markdown text; a repeated one gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in _split_fences(text)[0]:
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path, root: Path = REPO_ROOT) -> list[str]:
    """`page: target (why)` for every relative link of `page` that does not resolve."""
    prose, _ = _split_fences(page.read_text(encoding="utf-8"))
    text = "\n".join(_CODE_SPAN.sub("", line) for line in prose)
    problems = []
    for target in _LINK.findall(text):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: no file {path_part}")
        elif anchor and (dest.is_dir() or dest.suffix != ".md"):
            problems.append(f"{where}: an anchor on something that is not a markdown page")
        elif anchor and anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(
                f"{where}: no heading with anchor #{anchor} in {dest.relative_to(root)}"
            )
    return problems


def named_paths(page: Path) -> set[str]:
    """The repository paths a page names: in inline code and in fenced blocks."""
    prose, code = _split_fences(page.read_text(encoding="utf-8"))
    chunks = [span for line in prose for _, span in _CODE_SPAN.findall(line)] + code
    paths = set()
    for chunk in chunks:
        for token in _PATH_TOKEN.findall(chunk):
            if token.startswith(PATH_PREFIXES):
                paths.add(token.split(":")[0].rstrip(".,"))
    return paths


def missing_paths(page: Path, root: Path = REPO_ROOT) -> list[str]:
    """`page: path` for every repository path the page names that does not exist."""
    return [
        f"{page.relative_to(root)}: `{p}` does not exist"
        for p in sorted(named_paths(page))
        if not (root / p).exists()
    ]


# ------------------------------------------------------------------ the architecture page


def _module_name(path: Path, root: Path) -> list[str]:
    parts = ["research", *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def package_of(path: Path, root: Path) -> str | None:
    """`layers` for research/layers/x.py, `config` for research/config.py, None for
    research/__init__.py."""
    first = path.relative_to(root).with_suffix("").parts[0]
    return None if first == "__init__" else first


def imported_modules(path: Path, root: Path) -> Iterable[str]:
    """Every module an file imports, absolute, from any depth of its syntax tree."""
    me = _module_name(path, root)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me if is_package else me[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not node.module or module == "research":  # from . import x / from research import x
                yield from (f"{module}.{a.name}" for a in node.names)
            else:
                yield module


def package_imports(root: Path) -> dict[str, set[str]]:
    """For each package of the library at `root`, the other packages its modules import.

    A package's `__main__.py` is an entry point, like scripts/, not part of the package's
    dependencies: `python -m research.train` runs research.commands, which imports train.
    """
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        package = package_of(path, root)
        if package is None or path.name == "__main__.py":
            continue
        deps = graph.setdefault(package, set())
        for module in imported_modules(path, root):
            parts = module.split(".")
            if parts[0] == "research" and len(parts) > 1 and parts[1] != package:
                deps.add(parts[1])
    return graph


def documented_imports(text: str, heading: str = ARCHITECTURE_HEADING) -> dict[str, set[str]]:
    """The table under `## heading`: `| `package` | owns | `a`, `b` (or: nothing) |`."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.match(rf"^##\s+{heading}\s*$", line))
    except StopIteration:
        raise AssertionError(f"docs/architecture.md has no '## {heading}' section") from None
    graph: dict[str, set[str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 3:
            continue
        name = re.fullmatch(r"`(\w+)`", cells[0])
        if name:
            graph[name.group(1)] = set(re.findall(r"`(\w+)`", cells[-1]))
    return graph


def graph_difference(documented: dict[str, set[str]], found: dict[str, set[str]]) -> list[str]:
    """One line per disagreement between the page and the code, saying what to write."""
    out = []
    for package in sorted(found.keys() - documented.keys()):
        deps = ", ".join(f"`{d}`" for d in sorted(found[package])) or "nothing"
        out.append(f"`{package}` is missing from the table (it imports: {deps})")
    for package in sorted(documented.keys() - found.keys()):
        out.append(f"`{package}` is in the table but is no package of research/")
    for package in sorted(found.keys() & documented.keys()):
        extra = documented[package] - found[package]
        missing = found[package] - documented[package]
        if missing:
            out.append(f"`{package}` imports {sorted(missing)}, which the table does not list")
        if extra:
            out.append(f"`{package}` does not import {sorted(extra)}, which the table lists")
    return out


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: p.name)
def test_links_and_anchors_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: p.name)
def test_named_paths_exist(page):
    assert missing_paths(page) == []


def test_architecture_page_matches_the_imports():
    documented = documented_imports(
        (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    )
    found = package_imports(REPO_ROOT / "research")
    assert len(found) >= 10  # the walk saw the library (layers, models, ..., bench)
    assert graph_difference(documented, found) == []


def test_slug_follows_github():
    assert slug("Add a layer, add a model") == "add-a-layer-add-a-model"
    assert slug("Sweeps: one command, any number of machines") == (
        "sweeps-one-command-any-number-of-machines"
    )
    assert slug("Optimizers (`experiments/compare_optimizers.py`)") == (
        "optimizers-experimentscompare_optimizerspy"
    )
    assert slug("Measured on an H200") == "measured-on-an-h200"
    assert slug("**Bold** and [a link](x.md)") == "bold-and-a-link"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### A\n") == {"a", "a-1", "a-2"}


def test_checkers_find_bad_links_anchors_and_paths(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "train.py").write_text("")
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Good part\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n"
        "[ok](docs/page.md#good-part) [ok too](#title) [web](https://example.com/x#y)\n"
        "[no file](docs/gone.md) [no anchor](docs/page.md#bad-part) [here](#nowhere)\n"
        "Run `scripts/train.py` and `scripts/missing.py --flag`; `runs/x` is no repo path.\n"
        "```bash\npython experiments/gone.py:variant --workdir runs/y\n```\n"
        "`[not a link](nowhere.md)`\n"
    )
    links = broken_links(readme, tmp_path)
    assert len(links) == 3, links
    assert "no file docs/gone.md" in links[0]
    assert "no heading with anchor #bad-part in docs/page.md" in links[1]
    assert "#nowhere" in links[2]
    assert missing_paths(readme, tmp_path) == [
        "README.md: `experiments/gone.py` does not exist",
        "README.md: `scripts/missing.py` does not exist",
    ]


def test_architecture_check_finds_a_wrong_table(tmp_path):
    lib = tmp_path / "research"
    for folder in ("alpha", "beta"):
        (lib / folder).mkdir(parents=True)
        (lib / folder / "__init__.py").write_text("")
    (lib / "__init__.py").write_text("")
    (lib / "gamma.py").write_text("import os\n")
    (lib / "alpha" / "a.py").write_text(
        "from research.beta import x\n\ndef late():\n    from research import gamma\n"
    )
    (lib / "beta" / "b.py").write_text("from . import c\nfrom ..gamma import y\n")
    found = package_imports(lib)
    assert found == {"alpha": {"beta", "gamma"}, "beta": {"gamma"}, "gamma": set()}
    page = (
        "## Package dependencies\n\n| package | owns | imports |\n|---|---|---|\n"
        "| `alpha` | a | `beta` |\n| `beta` | b | `gamma`, `alpha` |\n| `delta` | d | nothing |\n"
        "\n## Next\n| `gamma` | g | nothing |\n"
    )
    assert graph_difference(documented_imports(page), found) == [
        "`gamma` is missing from the table (it imports: nothing)",
        "`delta` is in the table but is no package of research/",
        "`alpha` imports ['gamma'], which the table does not list",
        "`beta` does not import ['alpha'], which the table lists",
    ]
