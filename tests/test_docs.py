"""The project's documents are self-contained: nothing cites files outside the repository (a user has only the
clone), and every "docs/<file>.md section N" that the code, README and benchmarks cite exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def project_texts() -> dict[str, str]:
    """What a user reads: the package, the README, docs, notebooks, benchmarks and the pipeline's files."""
    paths = [*REPO.glob("lposs/**/*.py"), *REPO.glob("lposs/**/*.md"), *REPO.glob("docs/*.md"),
             *REPO.glob("notebooks/*.ipynb"), *REPO.glob("benchmarks/*.py"), *REPO.glob("benchmarks/*.sh")]
    paths += [REPO / name for name in ("README.md", "Makefile", "dvc.yaml", "params.yaml")]
    return {str(path.relative_to(REPO)): path.read_text(encoding="utf-8") for path in paths}


def test_nothing_cites_the_workspace_outside_the_clone():
    texts = project_texts()
    assert len(texts) > 50
    outside = re.compile(r"shared/spec|\bspec (?:section|heads\.md|lposs\.md)|\(spec (?:section|heads)|\.\./seed/")
    cited = [f"{name}: {match.group(0)!r}" for name, text in texts.items() for match in outside.finditer(text)]
    assert not cited, "\n".join(cited)
    # ../shared/ appears only as a default data folder (configurable, tests skip without it)
    for name, text in texts.items():
        for match in re.finditer(r"\.\./(?:\.\./)?shared/(\S*)", text):
            assert match.group(1).startswith("data"), f"{name}: {match.group(0)}"


def test_every_cited_docs_section_exists():
    headings = {}
    for doc in ("method", "field"):
        text = (REPO / "docs" / f"{doc}.md").read_text(encoding="utf-8")
        headings[doc] = {int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE)}
        assert headings[doc] == set(range(1, max(headings[doc]) + 1)), f"docs/{doc}.md: sections not 1..N"
    cites = [(name, doc, int(n)) for name, text in project_texts().items()
             for doc, numbers in re.findall(r"docs/(method|field)\.md\)?\s+sections?\s+([\d, and-]+)", text)
             for n in re.findall(r"\d+", numbers)]
    assert len(cites) > 10
    missing = [f"{name} cites docs/{doc}.md section {n}" for name, doc, n in cites if n not in headings[doc]]
    assert not missing, "\n".join(missing)


def test_markdown_tables_have_as_many_cells_in_every_row_as_in_their_header():
    """A sentence glued to a table's last row (README's robustness table had one) makes a ragged row."""
    def cells(line: str) -> int:
        return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))

    ragged = []
    for path in (REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))):
        header = None
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.startswith("|"):
                header = None
            elif header is None:
                header = cells(line)
            elif cells(line) != header or not line.rstrip().endswith("|"):
                ragged.append(f"{path.name}:{number}: {cells(line)} cells, header {header}: {line[:60]}...")
    assert not ragged, "\n".join(ragged)
