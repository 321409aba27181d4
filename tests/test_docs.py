"""The docs name what exists: every ``hardgen.<...>`` dotted module or attribute named in README.md and docs/*.md
resolves in src/, and every link from one doc to another's section finds that section.

Resolved from the source (a module file, then a top-level name in it, then a class's member), not by importing, so
the test needs no torch and a moved or renamed module or function fails here instead of misleading a reader.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: ``hardgen.x.y`` not inside a path (``envs/hardgen.yaml``) or a longer word.
DOTTED = re.compile(r"(?<![\w/.-])hardgen(?:\.[A-Za-z_]\w*)+")
#: File names that read like dotted names (``hardgen.sif``, ``hardgen.yaml``): not module names.
FILE_SUFFIXES = {"yaml", "yml", "sif", "json", "csv", "md", "py", "toml", "txt", "egg"}
LINK = re.compile(r"\]\(([\w.-]+\.md)?#([\w-]+)\)")


def module_file(parts: list[str]) -> Path | None:
    base = SRC.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def members(path: Path) -> dict[str, ast.AST]:
    """{name: node} of a module's top-level definitions, assignments and imports."""
    found: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                found[(alias.asname or alias.name).split(".")[0]] = node
    return found


def class_members(node: ast.ClassDef) -> set[str]:
    names = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(item.name)
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            for target in item.targets if isinstance(item, ast.Assign) else [item.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a hardgen module, a top-level name of one, or a member of a class of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_file(parts[:cut])
        if path is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        node = members(path).get(rest[0])
        if node is None or len(rest) > 2:
            return False
        return len(rest) == 1 or (isinstance(node, ast.ClassDef) and rest[1] in class_members(node))
    return False


def dotted_names(doc: Path) -> list[tuple[int, str]]:
    return [(number, match.group(0)) for number, line in enumerate(doc.read_text().splitlines(), 1)
            for match in DOTTED.finditer(line) if match.group(0).split(".")[1] not in FILE_SUFFIXES]


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in doc.read_text().splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_hardgen_name_in_the_docs_exists(doc):
    names = dotted_names(doc)
    assert names or doc.name != "architecture.md"  # the scan sees names (a test that can fail)
    assert [f"{doc.name}:{number}: {name}" for number, name in names if not resolves(name)] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_section_link_between_the_docs_finds_its_section(doc):
    broken = []
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        for target, anchor in LINK.findall(line):
            target_doc = doc.parent / target if target else doc
            if not target_doc.is_file() or anchor not in anchors(target_doc):
                broken.append(f"{doc.name}:{number}: {target}#{anchor}")
    assert broken == []


def test_the_resolver_tells_a_moved_name_from_a_present_one():
    assert resolves("hardgen.core.layout.PATTERNS") and resolves("hardgen.segmentation.build.build_segmenter")
    assert resolves("hardgen.generator.stages.LoraJob.from_params") and resolves("hardgen.models.archs")
    assert not resolves("hardgen.segmentation.segment") and not resolves("hardgen.core.layout.NO_SUCH_NAME")
    assert not resolves("hardgen.generator.stages.LoraJob.no_such_member")
    assert slug("A longer base (`make tiny-sd`): closer, not there") == "a-longer-base-make-tiny-sd-closer-not-there"
