"""The docs point at things that exist: relative links (and their anchors), quoted code paths, every notebook,
every CLI subcommand and every public name of ``involution.reference``."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Written by commands at run time, never committed (see .gitignore).
GENERATED_PREFIXES = ("out/",)
CODE_FOLDERS = ("involution", "reference", "fast", "conformance", "benchmarks", "tests", "notebooks", "docs")

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# A quoted repository path: a top-level code folder and more path (optionally ::name), or a root .md/.toml file.
# Bare names such as `involution_cuda.py` are not checked: docs quote files of the official repository that way.
CODE_PATH = re.compile(r"^(?:(?:%s)/[\w./-]*(?:::\w+)?|[\w.-]+\.(?:md|toml))$" % "|".join(CODE_FOLDERS))


def markdown_of(path: Path) -> str:
    """A page's text, or a notebook's markdown cells joined."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    return path.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, inline markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown page, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", markdown_of(path)))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: ...


def quoted_paths(path: Path) -> list[str]:
    return [code for code in INLINE_CODE.findall(FENCE.sub("", markdown_of(path))) if CODE_PATH.match(code)]


def documented_pages() -> list[Path]:
    return [page for page in PAGES if page.exists()] + NOTEBOOKS


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", documented_pages(), ids=page_id)
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {page_id(resolved)}; it has {sorted(anchors(resolved))})")
    assert not broken, f"{page_id(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", documented_pages(), ids=page_id)
def test_quoted_code_paths_exist(page):
    missing = []
    for code in quoted_paths(page):
        file_part, _, name = code.partition("::")
        if file_part.startswith(GENERATED_PREFIXES):
            continue
        target = ROOT / file_part
        if not target.exists():
            missing.append(f"`{code}` (no {file_part})")
        elif name and not re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*=", target.read_text(), re.M):
            missing.append(f"`{code}` ({file_part} defines no {name})")
    assert not missing, f"{page_id(page)}: quoted paths that do not exist: {missing}"


def test_every_notebook_is_linked_from_the_index():
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for target in relative_links(index)}
    unlinked = [page_id(notebook) for notebook in NOTEBOOKS if notebook.resolve() not in linked]
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    assert not unlinked, f"notebooks not linked from docs/index.md: {unlinked}"


def all_docs_text() -> str:
    return "\n".join(page.read_text() for page in PAGES if page.exists())


def test_every_cli_subcommand_is_documented():
    from involution.cli import COMMANDS

    text = all_docs_text()
    undocumented = [name for name in COMMANDS if f"involution {name}" not in text]
    assert not undocumented, (f"subcommands never quoted as `python -m involution NAME` in README.md or docs/: "
                              f"{undocumented} (registered: {sorted(COMMANDS)})")


def test_every_public_reference_name_is_documented():
    import involution.reference

    text = all_docs_text()
    undocumented = [name for name in involution.reference.__all__ if not re.search(rf"\b{name}\b", text)]
    assert not undocumented, f"involution.reference.__all__ names missing from README.md and docs/: {undocumented}"


def test_checker_catches_broken_links_and_paths(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [file](missing.md) [web](https://example.org)\n"
                    "`reference/op.py` `reference/nope.py` `reference/op.py::involution2d` `python -m involution`\n"
                    "```\n`fast/not_checked_in_fences.py`\n```\n")
    assert relative_links(page) == ["#title", "#nope", "missing.md"]
    assert anchors(page) == {"title"}
    assert quoted_paths(page) == ["reference/op.py", "reference/nope.py", "reference/op.py::involution2d"]
    assert slug("The `pair` rule: (h, w) — one place") == "the-pair-rule-h-w--one-place"
