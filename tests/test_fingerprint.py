"""The feature store's code fingerprint is derived from the code, never listed by hand: editing any module of the
import closure of what computes a shard (or a plugin's file) changes it, editing a solver does not, and a store
made by the old hand-kept fingerprint says it must be recomputed, and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lposs.experiment import extraction, store
from lposs.import_graph import ImportGraph

REPO = Path(__file__).resolve().parents[1]
ONCE_MISSED = ("lposs/models/text.py", "lposs/models/rope.py", "lposs/core/color.py", "lposs/models/text_cache.py")


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copy")
    shutil.copytree(REPO / "lposs", root / "lposs", ignore=shutil.ignore_patterns("__pycache__"))
    return root / "lposs"


def appended(path: Path, line: str):
    """Context: `path` with one more line, restored afterwards."""
    class Edit:
        def __enter__(self):
            self.text = path.read_text()
            path.write_text(self.text + line + "\n")

        def __exit__(self, *exc):
            path.write_text(self.text)

    return Edit()


def test_every_module_of_the_closure_changes_the_fingerprint_and_a_solver_does_not(package_copy):
    graph = ImportGraph(package_copy)
    closure = graph.files(graph.closure(set(extraction.SHARD_CODE)))
    covered = {str(path.relative_to(package_copy.parent)) for path in closure.values()}
    assert set(ONCE_MISSED) <= covered  # the modules the hand-kept list missed
    assert {"lposs/models/heads_2024/sclip.py", "lposs/models/heads_masks/corrclip.py"} <= covered  # found heads
    assert "lposs/core/propagation.py" not in covered and "lposs/experiment/ablation.py" not in covered
    before = extraction.code_fingerprint(package_copy)
    for path in closure.values():
        with appended(path, "# an edit"):
            assert extraction.code_fingerprint(package_copy) != before, path
    assert extraction.code_fingerprint(package_copy) == before
    with appended(package_copy / "core" / "propagation.py", "# a solver's edit"):
        assert extraction.code_fingerprint(package_copy) == before


def test_a_new_head_module_joins_the_closure_by_itself(package_copy):
    new = package_copy / "models" / "heads_2025" / "newhead.py"
    new.write_text('"""A new head."""\n')
    try:
        assert "lposs/models/heads_2025/newhead.py" in extraction.code_digests(package_copy)
    finally:
        new.unlink()


def test_a_plugins_file_is_part_of_the_fingerprint(tmp_path):
    from lposs import plugins
    from lposs.models.heads import HEADS, unregister_head

    path = tmp_path / "fp_plugin.py"
    path.write_text('import lposs\n\n\n@lposs.register_head("fp_head")\ndef head(visual, windows):\n    return 0\n')
    before = extraction.code_fingerprint()
    try:
        plugins.load_plugin(str(path))
        with_plugin = extraction.code_fingerprint()
        assert with_plugin != before and "plugin:fp_plugin.py" in extraction.code_digests()
        with appended(path, "# edited"):
            assert extraction.code_fingerprint() != with_plugin
    finally:
        if "fp_head" in HEADS:
            unregister_head("fp_head")


def test_a_store_of_the_old_fingerprint_must_be_recomputed_and_says_why(tmp_path):
    manifest = extraction.make_manifest("demo", ["a", "b"], "vlm", {"v": "vm"}, {"crop": 224, "stride": 112,
                                        "short_side": 224, "long_side": 2048})
    assert set(manifest["code_modules"]) >= set(ONCE_MISSED)
    old = {k: v for k, v in manifest.items() if k != "code_modules"} | {"code": "0123456789abcdef"}
    (tmp_path / store.MANIFEST).write_text(json.dumps(old))
    with pytest.raises(store.ManifestMismatch, match="made by the old code fingerprint.*lposs/models/text.py.*must "
                                                     "be recomputed"):
        store.FeatureStore(tmp_path, manifest)
    edited = dict(manifest, code="f" * 32, code_modules={**manifest["code_modules"], "lposs/models/rope.py": "0" * 12})
    (tmp_path / store.MANIFEST).write_text(json.dumps(edited))
    with pytest.raises(store.ManifestMismatch, match=r"code_modules\.lposs/models/rope\.py: stored 0{12} != requested"):
        store.FeatureStore(tmp_path, manifest)
