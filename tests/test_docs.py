"""The documentation's relative links resolve, and the README stays one page.

Checks every markdown link ``[text](target)`` in README.md, docs/*.md and bench/README.md:
a relative target must exist (relative to the file that links to it), and an ``#anchor`` into a
markdown file must name one of its headings, slugged as GitHub does. Web and mail links are not
followed. Links inside fenced code blocks and inline code are not links.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\S\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
#: ``[text](target)`` or ``[text](target "title")``; images (``![alt](src)``) are links too.
_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_EXTERNAL = ("http://", "https://", "mailto:")


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
    return [path for path in files if path.exists()]


def _without_code(text: str) -> str:
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target in ``text``, outside code."""
    return _LINK.findall(_without_code(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link and code markup dropped, lower-case, punctuation
    other than hyphens and underscores removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors GitHub makes for the headings of ``text`` (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    """What is wrong with the relative links of the markdown file at ``path``."""
    problems: list[str] = []
    for target in links(path.read_text(encoding="utf-8")):
        if target.startswith(_EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: {resolved} does not exist")
            continue
        is_markdown = resolved.suffix == ".md" and resolved.is_file()
        if anchor and is_markdown and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading with the anchor #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", _doc_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_the_docs_are_there() -> None:
    names = {str(path.relative_to(ROOT)) for path in _doc_files()}
    assert {"README.md", "docs/operations.md", "docs/protocol.md", "docs/design.md"} <= names


def test_readme_is_one_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


def test_slugs_follow_github() -> None:
    assert slug("Tests against the machine's own Redis and PostgreSQL") == (
        "tests-against-the-machines-own-redis-and-postgresql"
    )
    assert slug("WebSocket: GET /ws?token=JWT[&since=ID]") == "websocket-get-wstokenjwtsinceid"
    assert slug("`chainfeed dev` and CHAINFEED_LOG_LEVEL") == "chainfeed-dev-and-chainfeed_log_level"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# Present heading\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](there.md) [ok](there.md#present-heading) [web](https://example.com/missing)\n"
        "[gone](missing.md) [bad anchor](there.md#absent) `[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(doc)
    assert len(problems) == 2
    assert problems[0].startswith("missing.md:")
    assert problems[1].startswith("there.md#absent:")
