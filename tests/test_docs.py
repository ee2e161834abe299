"""The project's documents are self-contained and true at every commit: nothing cites files outside the repository
(a user has only the clone); every "docs/<file>.md section N" cited exists; every link and every path a document
names is there; the README's first screen holds the two commands and what is measured here and what is not; and the
numbers the README quotes are the ones the code computes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def project_texts() -> dict[str, str]:
    """What a user reads: the package, the README, docs, notebooks, benchmarks and the pipeline's files."""
    paths = [*REPO.glob("lposs/**/*.py"), *REPO.glob("lposs/**/*.md"), *REPO.glob("docs/*.md"),
             *REPO.glob("notebooks/*.ipynb"), *REPO.glob("benchmarks/*.py"), *REPO.glob("benchmarks/*.sh")]
    paths += [REPO / name for name in ("README.md", "Makefile", "dvc.yaml", "params.yaml")]
    return {str(path.relative_to(REPO)): path.read_text(encoding="utf-8") for path in paths}


def documents() -> list[Path]:
    """The markdown a user reads: the README and docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_nothing_cites_the_workspace_outside_the_clone():
    texts = project_texts()
    assert len(texts) > 50
    outside = re.compile(r"shared/spec|\bspec (?:section|heads\.md|lposs\.md)|\(spec (?:section|heads)|\.\./seed/")
    cited = [f"{name}: {match.group(0)!r}" for name, text in texts.items() for match in outside.finditer(text)]
    assert not cited, "\n".join(cited)
    # ../shared/ appears only as a default data folder (configurable, tests skip without it), and never in what a
    # user reads first: the README and docs/
    for name, text in texts.items():
        for match in re.finditer(r"\.\./(?:\.\./)?shared/(\S*)", text):
            assert match.group(1).startswith("data") and not name.endswith(".md"), f"{name}: {match.group(0)}"


def test_every_cited_docs_section_exists():
    headings = {}
    for doc in ("method", "field"):
        text = (REPO / "docs" / f"{doc}.md").read_text(encoding="utf-8")
        headings[doc] = {int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE)}
        assert headings[doc] == set(range(1, max(headings[doc]) + 1)), f"docs/{doc}.md: sections not 1..N"
    # "docs/method.md section 9", "[`field.md`](field.md) sections 5 and 7"
    cite = re.compile(r"\b(method|field)\.md`?\]?(?:\([^)]*\))?\s+sections?\s+([\d, and-]+)")
    cites = [(name, doc, int(n)) for name, text in project_texts().items()
             for doc, numbers in cite.findall(text) for n in re.findall(r"\d+", numbers)]
    assert len(cites) > 10
    missing = [f"{name} cites docs/{doc}.md section {n}" for name, doc, n in cites if n not in headings[doc]]
    assert not missing, "\n".join(missing)


def test_markdown_tables_have_as_many_cells_in_every_row_as_in_their_header():
    """A sentence glued to a table's last row (README's robustness table had one) makes a ragged row."""
    def cells(line: str) -> int:
        return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))

    ragged = []
    for path in documents():
        header = None
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.startswith("|"):
                header = None
            elif header is None:
                header = cells(line)
            elif cells(line) != header or not line.rstrip().endswith("|"):
                ragged.append(f"{path.name}:{number}: {cells(line)} cells, header {header}: {line[:60]}...")
    assert not ragged, "\n".join(ragged)


# --------------------------------------------------------------------------------------------------
# The README's first screen, the links and paths the documents name
# --------------------------------------------------------------------------------------------------

def test_the_readme_first_screen_holds_the_two_commands_and_what_is_measured_and_what_is_not():
    screen = "\n".join((REPO / "README.md").read_text(encoding="utf-8").splitlines()[:40])
    commands = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", screen, flags=re.DOTALL)
                for line in block.splitlines()]
    assert "make repro" in commands and "make test" in commands, commands
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(encoding="utf-8"), flags=re.MULTILINE))
    assert {"repro", "test"} <= targets
    box = "\n".join(line for line in screen.splitlines() if line.startswith(">"))
    assert "What is measured here, and what is not" in box
    for statement in ("No CLIP, DINO or SAM weights have ever run", "random weights", "No GPU has run this code",
                      "benchmarks/gpu_check.sh", "8-benchmark table has never been filled", "stand-ins",
                      "What is checked", "benchmarks/parity_*.py"):
        assert statement in box, statement


def test_every_link_resolves_and_every_docs_page_is_reached_from_the_readme():
    broken, linked = [], set()
    for path in documents():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.exists():
                broken.append(f"{path.relative_to(REPO)} links {target}")
            if path.name == "README.md":
                linked.add(resolved)
    assert not broken, "\n".join(broken)
    orphans = [page.name for page in (REPO / "docs").glob("*.md") if page.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def code_spans(text: str) -> list[str]:
    return [span for span in re.findall(r"`([^`\n]+)`", text)]


def test_every_repository_path_the_documents_name_exists():
    """`lposs/...`, `docs/...`, `notebooks/...`, `benchmarks/...`, `tests/...` in backticks: files or folders of
    the clone (a `*` or `<name>` stands for any name)."""
    roots = ("lposs/", "docs/", "notebooks/", "benchmarks/", "tests/")
    missing = []
    for path in documents():
        for span in code_spans(path.read_text(encoding="utf-8")):
            for word in span.split():
                if not word.startswith(roots) or "://" in word:
                    continue
                pattern = re.sub(r"<[^>]+>", "*", word.rstrip("/.,;:)"))
                if not list(REPO.glob(pattern)):
                    missing.append(f"{path.relative_to(REPO)}: {word}")
    assert not missing, "\n".join(missing)


def test_the_outputs_the_documents_name_are_those_the_pipeline_and_make_write():
    """plots/ paths lie in the folders dvc.yaml declares as plots, and a named figure is one the plots notebook
    saves; results/ and executed/ paths are named by dvc.yaml or the Makefile."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    folders = [next(iter(entry)) if isinstance(entry, dict) else entry for entry in dvc["plots"]]
    notebook = (REPO / "notebooks" / "plots.ipynb").read_text(encoding="utf-8")
    figures = [re.sub(r"\\\{[^}]+\\\}", ".+", re.escape(name))
               for name in re.findall(r'figures / f?\\"([^"\\]+)\\"', notebook)]
    assert len(figures) >= 4
    written = (REPO / "dvc.yaml").read_text(encoding="utf-8") + (REPO / "Makefile").read_text(encoding="utf-8")
    wrong = []
    for path in documents():
        for span in code_spans(path.read_text(encoding="utf-8")):
            for word in re.findall(r"(?<![\w/.$-])((?:plots|results|executed)/[^\s,;)]*)", span):
                if word.startswith("plots/"):
                    folder = next((f for f in folders if word.startswith(f + "/")), None)
                    name = word[len(folder) + 1:] if folder else ""
                    ok = folder is not None and (folder != "plots/figures" or "*" in name
                                                 or any(re.fullmatch(f, name) for f in figures))
                else:
                    ok = word.rstrip("/") in written
                if not ok:
                    wrong.append(f"{path.relative_to(REPO)}: {word}")
    assert not wrong, "\n".join(wrong)


def test_docs_choices_names_every_registered_head_protocol_refiner_and_mask_model():
    """The registries are the lists (lposs segment --help prints them); docs/choices.md describes each entry."""
    from lposs.core.refiners import REFINERS
    from lposs.models.heads import HEADS
    from lposs.models.masks import MASK_MODELS
    from lposs.models.protocols import PROTOCOLS

    named = set(code_spans((REPO / "docs" / "choices.md").read_text(encoding="utf-8")))
    registries = ((HEADS, "head"), (PROTOCOLS, "protocol"), (REFINERS, "refiner"), (MASK_MODELS, "mask model"))
    for registry, what in registries:
        absent = [name for name in registry if name not in named]
        assert not absent, f"docs/choices.md does not describe the {what}s {absent}"


# --------------------------------------------------------------------------------------------------
# The numbers the README quotes
# --------------------------------------------------------------------------------------------------

def quoted(pattern: str) -> tuple[str, ...]:
    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())  # line breaks as spaces
    match = re.search(pattern, text)
    assert match, f"the README no longer says {pattern!r}: update this test with it"
    return match.groups()


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory):
    """The paper setting's store (MaskCLIP + DINO ViT-B/16, v in float16, LPOSS protocol) of the 8 benchmarks at
    their registry's image counts and typical sizes (no dataset on disk), by lposs.experiment.sizing."""
    from lposs.experiment import paper

    return paper.paper_store(str(tmp_path_factory.mktemp("nothing") / "data"))


def test_the_store_sizes_the_readme_quotes_are_the_estimate_of_lposs_paper_check(paper_store):
    """The same arithmetic tests/test_paper_check.py holds against shards saved from the real-size backbones."""
    from lposs.datasets.base import packaged_class_names
    from lposs.experiment.sizing import MB
    from lposs.models.protocols import class_names
    from lposs.models.text import split_synonyms

    by_name = {d.entry: d for d in paper_store.datasets}
    windows, prompts, per_image = quoted(r"\((\d+) windows of 224 on a VOC image, DINO's v in float16, VOC's (\d+) "
                                         r"class prompts\) that is about ([\d.]+) MB per image")
    voc = by_name["voc21"]
    assert voc.source.startswith("nominal: 1449 images of 375 x 500")
    prompts_voc = len(split_synonyms(class_names("lposs", "voc21", packaged_class_names("voc21")))[0])
    assert (int(windows), int(prompts), per_image) == (voc.windows, prompts_voc, f"{voc.per_image / MB:.2f}")
    city_windows, city = quoted(r"2048 x 1024 Cityscapes image \((\d+) windows\) takes about ([\d.]+) MB")
    cityscapes = by_name["cityscapes"]
    assert "1024 x 2048" in cityscapes.source
    assert (int(city_windows), city) == (cityscapes.windows, f"{cityscapes.per_image / MB:.2f}")
    images, total, heads, comparison = quoted(r"The 8 benchmarks \(([\d,]+) images\) need about (\d+) GB for one "
                                              r"head and graph, and a comparison of (\d+) heads on that graph, \d+ "
                                              r"such stores, about ([\d.]+) TB")
    assert len(paper_store.datasets) == 8 and not paper_store.unknown
    assert int(images.replace(",", "")) == sum(d.images for d in paper_store.datasets)
    assert total == f"{paper_store.total / 1e9:.0f}"
    assert comparison == f"{int(heads) * paper_store.total / 1e12:.2f}"
