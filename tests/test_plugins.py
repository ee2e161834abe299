"""A researcher's own head, from a file outside the package: `lposs.register_head`, `--plugin`, the example of
docs/heads.md (that very file), and the errors that name what to fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lposs
from lposs import plugins
from lposs.app import cli
from lposs.models import protocols
from lposs.models.heads import HEADS, dense_clip_features, unregister_head

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "heads.md"


def docs_plugin() -> str:
    """The complete plugin file shown in docs/heads.md (its first python block)."""
    return re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)


@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards (the registry is the process's)."""
    before = set(HEADS)
    yield
    for name in set(HEADS) - before:
        unregister_head(name)


def write_plugin(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(body)
    return path


SCALED = '''import lposs
from lposs.models.heads import dense_clip_features


@lposs.register_head("{name}", title="{name}", defaults={{"interpolation": "lposs"}})
def scaled(visual, windows, interpolation):
    return {factor} * dense_clip_features(visual, windows, "maskclip", interpolation=interpolation)
'''


def segment(tmp_path: Path, head: str, plugin: Path | None = None) -> np.ndarray:
    image = tmp_path / "photo.png"
    if not image.exists():
        Image.fromarray(np.random.RandomState(0).randint(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    out = tmp_path / f"{head}.png"
    cli.main(["segment", str(image), "--classes", "cow; grass; sky; road", "--out", str(out), "--random-weights",
              "--head", head, "--short-side", "112", "--mode", "lposs", *(["--plugin", str(plugin)] if plugin else [])])
    return np.asarray(Image.open(out))


def test_segment_with_a_plugin_head_gives_maskclips_labels_and_a_negated_one_others(tmp_path, registered):
    double = write_plugin(tmp_path, "double", SCALED.format(name="double_maskclip", factor=2))
    negated = write_plugin(tmp_path, "negated", SCALED.format(name="negated_maskclip", factor=-1))
    maskclip = segment(tmp_path, "maskclip")
    assert np.array_equal(segment(tmp_path, "double_maskclip", double), maskclip)  # 2 x features, normalised
    assert not np.array_equal(segment(tmp_path, "negated_maskclip", negated), maskclip)
    assert plugins.plugin_file(str(double)) in plugins.sources()  # part of the feature store's fingerprint


def test_the_docs_plugin_registers_a_head_that_runs_like_the_packages(tmp_path, registered):
    from test_heads import clip_windows

    from lposs.models.loading import load_open_clip
    from lposs.models.vit import attend, qkv_per_head, softmax_similarity, tokens_before_last_block

    plugins.load_plugin(str(write_plugin(tmp_path, "my_head", docs_plugin())))
    record = HEADS["vvclip"]
    assert (record.title, record.kind, record.training) == ("VV-CLIP (example plugin)", "window", "training-free")
    assert protocols.resolve("vvclip", "voc21")["prob_thd"] == 0.1 and "vvclip" in protocols.PROTOCOLS
    visual = load_open_clip("ViT-B-16", None, None, 0, False).visual.eval()
    x = clip_windows(2, 160, 224)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, "vvclip")  # [2, 10, 14, 512]
        block = visual.transformer.resblocks[-1]
        _, _, v = qkv_per_head(block, tokens_before_last_block(visual, x, "sclip"))
        hand = visual.ln_post(attend(block, softmax_similarity(v, v), v)[:, 1:]) @ visual.proj
        hand = torch.nn.functional.normalize(hand, dim=-1).reshape(2, 10, 14, -1)
    torch.testing.assert_close(feats, hand, atol=1e-6, rtol=0)
    assert (feats - dense_clip_features(visual, x, "maskclip")).abs().max() > 1e-2


def test_register_head_is_a_decorator_and_refuses_a_name_taken(registered):
    @lposs.register_head("mine_twice", defaults={})
    def mine(visual, windows):
        return windows

    assert HEADS["mine_twice"].function is mine and HEADS["mine_twice"].origin.endswith(
        f"test_plugins.py:{mine.__code__.co_firstlineno}")
    with pytest.raises(ValueError, match=r"'sclip' is registered twice: at .*heads_2024/sclip.py:\d+ and at "
                                         r".*test_plugins.py:\d+"):
        lposs.register_head("sclip")(mine)
    with pytest.raises(ValueError, match="kind 'bogus' is none of"):
        lposs.register_head("bad_kind", kind="bogus")(mine)
    with pytest.raises(ValueError, match="its base names background"):
        lposs.register_head("bad_protocol", protocol={"base": {"crop": 224}})(mine)
    with pytest.raises(ValueError, match="not a plugin's"):
        unregister_head("maskclip")


def test_plugin_errors_name_the_file_and_what_to_do(tmp_path, registered):
    with pytest.raises(FileNotFoundError, match=r"plugin file .*nope\.py does not exist"):
        plugins.load_plugin(str(tmp_path / "nope.py"))
    with pytest.raises(plugins.PluginError, match="plugin module 'no_such_module_here' cannot be found"):
        plugins.load_plugin("no_such_module_here")
    clash = write_plugin(tmp_path, "clash", SCALED.format(name="sclip", factor=1))
    with pytest.raises(plugins.PluginError, match=r"clash\.py at line 5 raised ValueError: head 'sclip' is registered "
                                                  r"twice: at .*sclip\.py:\d+ and at .*clash\.py:5"):
        plugins.load_plugin(str(clash))
    broken = write_plugin(tmp_path, "broken", "import lposs\n\nx = 1\nraise RuntimeError('my bug')\n")
    with pytest.raises(plugins.PluginError, match=r"broken\.py at line 4 raised RuntimeError: my bug"):
        plugins.load_plugin(str(broken))
    result = cli_error(["segment", "x.png", "--classes", "a", "--out", "o.png", "--plugin", str(tmp_path / "gone.py")])
    assert "gone.py does not exist" in result


def cli_error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    return str(stopped.value)


def test_a_plugin_is_imported_once(tmp_path, registered):
    path = write_plugin(tmp_path, "once", SCALED.format(name="once_maskclip", factor=3))
    assert plugins.load_plugins([str(path), str(path)])[0] is plugins.load_plugin(str(path))
