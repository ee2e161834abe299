"""The results table's published rows, read from the head records: every average is the mean of its 8 numbers, and
the 2025 heads get theirs (docs/field.md section 7), in the table's column order, each row with its source."""

from __future__ import annotations

import pytest

from lposs.experiment import tables
from lposs.models.heads import HEADS
from lposs.models.records import PUBLISHED_ORDER

# the sources' order VOC21 / PC60 / Object / VOC20 / PC59 / Stuff / City / ADE, as ResCLIP's and PEARL's figures print
SOURCE_ORDER = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]
AS_PUBLISHED = {  # head -> [(numbers in SOURCE_ORDER, average)]
    "resclip": [([61.1, 33.5, 35.0, 86.0, 36.8, 24.7, 35.9, 18.0], 41.4)],
    "pearl": [([64.1, 35.1, 37.3, 86.9, 38.6, 26.3, 37.6, 19.4], 43.2)],
    "cass": [([58.6, 32.1, 33.1, 86.1, 35.3, 23.9, 34.1, 17.6], 40.1),
             ([62.3, 34.0, 36.0, 87.6, 37.6, 25.4, 36.2, 18.8], 42.2)],
    "sfp": [([56.8, 32.3, 32.1, 83.4, 36.0, 24.0, 34.1, 18.1], 39.6)],
}
WITH_ROWS = sorted(name for name, record in HEADS.items() if record.published)


@pytest.mark.parametrize("head", WITH_ROWS)
def test_every_published_average_is_the_mean_of_its_eight_numbers(head):
    for row in HEADS[head].published:
        assert len(row.miou) == len(PUBLISHED_ORDER) == 8, row.name
        assert sum(row.miou) / 8 == pytest.approx(row.average, abs=0.05 + 1e-9), row.name  # 30.25 -> 30.3: half up
        assert row.source, f"{row.name}: a published row names its source"


def test_a_published_row_needs_eight_numbers():
    from lposs.models.records import Published

    with pytest.raises(ValueError, match="give 8 numbers in the order voc21"):
        Published("mine", (1.0, 2.0), 1.5, "nowhere")


@pytest.mark.parametrize("head", sorted(AS_PUBLISHED))
def test_the_2025_heads_get_their_published_numbers_in_the_tables_column_order(head):
    rows = HEADS[head].published
    assert [row.average for row in rows] == [average for _, average in AS_PUBLISHED[head]]
    for row, (source, _) in zip(rows, AS_PUBLISHED[head]):
        assert "OpenAI CLIP" in row.name and "training-free" in row.name
        for dataset, value in zip(SOURCE_ORDER, source):
            assert row.on(dataset) == value, (row.name, dataset)
    by_dataset = dict(zip(SOURCE_ORDER, AS_PUBLISHED[head][0][0]))
    for dataset in PUBLISHED_ORDER:
        assert tables.published(head, dataset)[0] == (rows[0].name, by_dataset[dataset])


def test_the_cass_rows_name_their_proxies_and_whose_run_they_are():
    names = [row.name for row in HEADS["cass"].published]
    assert any("DINOv2-reg B/14" in n for n in names) and any("DINOv3 B/16" in n for n in names)
    assert all("PEARL's reproduction" in n for n in names + [HEADS["sfp"].published[0].name])
    assert "TLP" in HEADS["pearl"].published[0].name


def _run(head: str, datasets: list[str]) -> dict:
    scores = {mode: {"miou": 10.0, "biou": 5.0} for mode in tables.METHODS}
    return {"head": head, "vm": "dinov3_vitb16", "protocol": head, "modes": {d: scores for d in datasets}}


def test_a_2025_heads_table_shows_its_published_rows_and_their_sources():
    datasets = list(PUBLISHED_ORDER)
    table = tables.results_table([_run("cass", datasets), _run("pearl", datasets)], datasets)
    assert ("| cass | published | own | as its name says | CASS (OpenAI CLIP + DINOv3 B/16 proxy, training-free; PEARL's reproduction) "
            "| 62.3 | 34.0 | 36.0 | 87.6 | 36.2 | 37.6 | 18.8 | 25.4 | 42.2 |") in table
    assert "| pearl | published | own | as its name says | PEARL (" in table and "| 43.2 |" in table
    assert "Published rows of cass, pearl:" in table and "PGSmall/PEARL c26062b assets/results.png" in table


def test_the_demo_table_keeps_its_footnote_and_a_head_without_rows_gets_none():
    for head, datasets in (("demo", ["demo"]), ("scclip", ["voc21"])):
        table = tables.results_table([_run(head, datasets)], datasets)
        assert "Published rows of" not in table and "sections 5 and 7" in table, head
        # the talk's 38.3 is patch propagation on CLIP's own features, not LPOSS with DINO's graph
        assert "CLIP's own features as the graph 38.3 -> LPOSS+ with DINO's graph 41.3" in table
    table = tables.results_table([_run("sclip", ["voc21"])], ["voc21"])
    assert "Published rows of sclip:" in table and "OV-Stitcher" in table
