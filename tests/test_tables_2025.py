"""The results table's published rows: every average is the mean of its 8 numbers, and the 2025 heads get theirs
(docs/field.md section 7), in the table's column order, without touching the tables of the other heads."""

from __future__ import annotations

import pytest

from lposs.experiment import tables
from lposs.models.heads import HEADS

# the sources' order VOC21 / PC60 / Object / VOC20 / PC59 / Stuff / City / ADE, as ResCLIP's and PEARL's figures print
SOURCE_ORDER = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]
AS_PUBLISHED = {  # head -> [(numbers in SOURCE_ORDER, average)]
    "resclip": [([61.1, 33.5, 35.0, 86.0, 36.8, 24.7, 35.9, 18.0], 41.4)],
    "pearl": [([64.1, 35.1, 37.3, 86.9, 38.6, 26.3, 37.6, 19.4], 43.2)],
    "cass": [([58.6, 32.1, 33.1, 86.1, 35.3, 23.9, 34.1, 17.6], 40.1),
             ([62.3, 34.0, 36.0, 87.6, 37.6, 25.4, 36.2, 18.8], 42.2)],
    "sfp": [([56.8, 32.3, 32.1, 83.4, 36.0, 24.0, 34.1, 18.1], 39.6)],
}


@pytest.mark.parametrize("head", sorted(tables.PUBLISHED))
def test_every_published_average_is_the_mean_of_its_eight_numbers(head):
    for name, numbers, average in tables.PUBLISHED[head]:
        assert len(numbers) == len(tables.PUBLISHED_ORDER) == 8, name
        assert sum(numbers) / 8 == pytest.approx(average, abs=0.05 + 1e-9), name  # 30.25 -> 30.3 rounds half up


def test_every_published_head_is_a_head_of_the_registry():
    assert set(tables.PUBLISHED) <= set(HEADS)


@pytest.mark.parametrize("head", sorted(AS_PUBLISHED))
def test_the_2025_heads_get_their_published_numbers_in_the_tables_column_order(head):
    assert head in HEADS
    rows = tables.PUBLISHED[head]
    assert [average for _, _, average in rows] == [average for _, average in AS_PUBLISHED[head]]
    for (name, numbers, _), (source, _) in zip(rows, AS_PUBLISHED[head]):
        assert "OpenAI CLIP" in name and "training-free" in name
        for dataset, value in zip(SOURCE_ORDER, source):
            assert numbers[tables.PUBLISHED_ORDER.index(dataset)] == value, (name, dataset)
    by_dataset = dict(zip(SOURCE_ORDER, AS_PUBLISHED[head][0][0]))
    for dataset in tables.PUBLISHED_ORDER:
        assert tables.published(head, dataset)[0] == (rows[0][0], by_dataset[dataset])


def test_the_cass_rows_name_their_proxies_and_whose_run_they_are():
    names = [name for name, _, _ in tables.PUBLISHED["cass"]]
    assert any("DINOv2-reg B/14" in n for n in names) and any("DINOv3 B/16" in n for n in names)
    assert all("PEARL's reproduction" in n for n in names + [tables.PUBLISHED["sfp"][0][0]])
    assert "TLP" in tables.PUBLISHED["pearl"][0][0]


def _run(head: str, datasets: list[str]) -> dict:
    scores = {mode: {"miou": 10.0, "biou": 5.0} for mode in tables.METHODS}
    return {"head": head, "vm": "dinov3_vitb16", "protocol": head, "modes": {d: scores for d in datasets}}


def test_a_2025_heads_table_shows_its_published_rows_and_their_sources():
    datasets = tables.PUBLISHED_ORDER
    table = tables.results_table([_run("cass", datasets), _run("pearl", datasets)], datasets)
    assert ("| cass | published | own | as its name says | CASS (OpenAI CLIP + DINOv3 B/16 proxy, training-free; PEARL's reproduction) "
            "| 62.3 | 34.0 | 36.0 | 87.6 | 36.2 | 37.6 | 18.8 | 25.4 | 42.2 |") in table
    assert "| pearl | published | own | as its name says | PEARL (" in table and "| 43.2 |" in table
    assert "Published rows of cass, pearl:" in table and "docs/field.md sections 7 and 16" in table


def test_tables_without_the_2025_heads_keep_their_footnote():
    for head, datasets in (("demo", ["demo"]), ("sclip", ["voc21"]), ("scclip", ["voc21"])):
        table = tables.results_table([_run(head, datasets)], datasets)
        assert "Published rows of" not in table and "sections 5 and 7" in table, head
