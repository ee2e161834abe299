"""The text side: prompts run only up to their end-of-text token give open_clip's full-context embeddings, and
the persistent class-embedding cache serves only what the same weights, templates, dtype and prompts gave.

Random weights (no download). The equality tests use the real ViT-B-16 text towers (OpenAI's QuickGELU and
laion2b's GELU configs) on a few prompts of different lengths; the cache tests use a tiny config.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import register_tiny_clip

from lposs.models import text, text_cache
from lposs.models.backbones import DenseCLIP
from lposs.models.text_cache import TextCache, weights_digest

TINY = "lposs-test-tiny-text"
PROMPTS = ["a photo of a cat.", "a bad photo of the rear wheel of a red double-decker bus.", "sky",
           "itap of a hot air balloon.", "a toy potted plant.", "a sculpture of the person in the shirt."]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return register_tiny_clip(tmp_path_factory.mktemp("open_clip_cfg"), TINY, text_layers=2, text_heads=2)


@pytest.mark.parametrize("model_name, quick_gelu", [("ViT-B-16", True), ("ViT-B-16", False)],
                         ids=["openai-quickgelu", "laion2b-gelu"])
def test_fit_context_equals_full_context(model_name, quick_gelu):
    vlm = DenseCLIP(model_name, pretrained=None, quick_gelu=quick_gelu, text_cache=None)
    tokens = vlm.tokenizer(PROMPTS)  # [6, 77]
    assert text.can_truncate(vlm.model)
    assert int(text.end_positions(vlm.model, tokens).max()) + 1 < 20  # the fit context really is short
    with torch.no_grad():
        full = text.encode_tokens(vlm.model, tokens, "full")  # open_clip's encode_text
        fit = text.encode_tokens(vlm.model, tokens, "fit")
        reference = torch.nn.functional.normalize(vlm.model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(full, reference, rtol=0, atol=0)
    rel = ((fit - full).norm(dim=-1) / full.norm(dim=-1)).max().item()
    assert rel < 1e-6, rel
    # A wrong cut (one token short of the longest prompt) is not close: the test can fail.
    cut = int(text.end_positions(vlm.model, tokens).max())
    with torch.no_grad():
        short = text.encode_tokens(vlm.model, tokens[:, :cut], "fit")
    assert not torch.allclose(short[1], full[1], atol=1e-3)


def test_prompt_order_survives_length_sorted_batches(tiny_config, monkeypatch):
    vlm = DenseCLIP(TINY, pretrained=None, text_cache=None)
    monkeypatch.setattr(text, "TEXT_BATCH_SIZE", 4)  # 6 prompts sorted by length, two batches
    with torch.no_grad():
        fit = text.encode_prompts(vlm.model, vlm.tokenizer, PROMPTS, vlm.device, "fit")
        one_by_one = torch.cat([text.encode_tokens(vlm.model, vlm.tokenizer([p]), "full") for p in PROMPTS])
    torch.testing.assert_close(fit, one_by_one, rtol=1e-5, atol=1e-6)


def test_reference_mode_embeddings_equal_fast_mode(tiny_config):
    names = ["cat", "dog; puppy", "hot air balloon"]
    fast, _ = DenseCLIP(TINY, pretrained=None, text_cache=None).text_embeddings(names)
    full, _ = DenseCLIP(TINY, pretrained=None, text_context="full", text_cache=None).text_embeddings(names)
    assert ((fast - full).norm(dim=-1) / full.norm(dim=-1)).max() < 1e-6
    with pytest.raises(ValueError, match="text_context"):
        DenseCLIP(TINY, pretrained=None, text_context="short")


# ---------------------------------------------------------------------------------------------------
# The persistent cache
# ---------------------------------------------------------------------------------------------------


def count_encodings(monkeypatch) -> list[int]:
    """Each call of prompt_ensembles through the cache records how many synonyms it encoded."""
    calls: list[int] = []
    real = text_cache.prompt_ensembles

    def spy(model, tokenizer, synonyms, device, context="fit", templates=None):
        calls.append(len(synonyms))
        return real(model, tokenizer, synonyms, device, context, templates)

    monkeypatch.setattr(text_cache, "prompt_ensembles", spy)
    return calls


def test_cache_hits_on_the_same_inputs_and_misses_on_new_synonyms(tiny_config, tmp_path, monkeypatch):
    calls = count_encodings(monkeypatch)
    cache = TextCache(tmp_path)
    first, _ = DenseCLIP(TINY, pretrained=None, text_cache=cache).text_embeddings(["cat", "dog; puppy"])
    assert calls == [3] and len(list(cache.folder.rglob("*.pt"))) == 3
    again, owner = DenseCLIP(TINY, pretrained=None, text_cache=cache).text_embeddings(["cat", "dog; puppy"])
    assert calls == [3] and owner.tolist() == [0, 1, 1]  # a new instance (another run): all from disk
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    DenseCLIP(TINY, pretrained=None, text_cache=cache).text_embeddings(["puppy", "cow"])
    assert calls == [3, 1]  # only the new synonym is encoded


def test_cache_misses_on_another_weight_template_set_dtype_or_context(tiny_config, tmp_path, monkeypatch):
    calls = count_encodings(monkeypatch)
    cache = TextCache(tmp_path)
    DenseCLIP(TINY, pretrained=None, text_cache=cache).text_embeddings(["cat"])
    changed = DenseCLIP(TINY, pretrained=None, text_cache=cache)
    with torch.no_grad():
        changed.model.transformer.resblocks[1].mlp.c_proj.weight[0, 0] += 1e-3  # one weight of the text tower
    emb, _ = changed.text_embeddings(["cat"])
    assert calls == [1, 1]
    fresh = DenseCLIP(TINY, pretrained=None, text_cache=None)
    fresh.model.load_state_dict(changed.model.state_dict())
    torch.testing.assert_close(emb, fresh.text_embeddings(["cat"])[0], rtol=0, atol=0)  # its own weights' value
    calls.clear()
    full = DenseCLIP(TINY, pretrained=None, text_cache=cache, text_context="full")
    full.text_embeddings(["cat"])
    assert calls == [1]
    double = DenseCLIP(TINY, pretrained=None, text_cache=cache)
    double.model.double()
    double.text_embeddings(["cat"])
    assert calls == [1, 1]
    monkeypatch.setattr(text_cache, "imagenet_templates", lambda: text.imagenet_templates()[:7])
    seven, _ = DenseCLIP(TINY, pretrained=None, text_cache=cache).text_embeddings(["cat"])
    assert calls == [1, 1, 1]
    by_hand = text.prompt_ensembles(full.model, full.tokenizer, ["cat"], full.device, "full",
                                    text.imagenet_templates()[:7])
    assert ((seven - by_hand).norm() / by_hand.norm()) < 1e-6  # the entry holds what its key says
    # the image tower is not part of the key: changing it still hits
    image_changed = DenseCLIP(TINY, pretrained=None, text_cache=cache)
    monkeypatch.undo()
    calls = count_encodings(monkeypatch)
    with torch.no_grad():
        image_changed.model.visual.proj[0, 0] += 1.0
    image_changed.text_embeddings(["cat"])
    assert calls == []


def test_weights_digest_sees_one_changed_value(tiny_config):
    vlm = DenseCLIP(TINY, pretrained=None, text_cache=None)
    before = weights_digest(vlm.model)
    assert weights_digest(vlm.model) == before
    with torch.no_grad():
        vlm.model.token_embedding.weight[123, 4] *= -1
    assert weights_digest(vlm.model) != before


def test_damaged_entry_is_a_miss_and_is_rewritten(tiny_config, tmp_path, monkeypatch):
    cache = TextCache(tmp_path)
    first, _ = DenseCLIP(TINY, pretrained=None, text_cache=cache).text_embeddings(["cat"])
    (entry,) = cache.folder.rglob("*.pt")
    entry.write_bytes(b"not a tensor")
    calls = count_encodings(monkeypatch)
    again, _ = DenseCLIP(TINY, pretrained=None, text_cache=cache).text_embeddings(["cat"])
    assert calls == [1]
    torch.testing.assert_close(again, first)
    assert cache.get(entry.stem) is not None


def test_cache_location_follows_lposs_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LPOSS_CACHE", str(tmp_path / "here"))
    assert TextCache.from_env().folder == tmp_path / "here" / "text"
    monkeypatch.setenv("LPOSS_CACHE", "off")
    assert TextCache.from_env() is None
    monkeypatch.delenv("LPOSS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert TextCache.from_env().folder == tmp_path / "xdg" / "lposs" / "text"


def test_two_processes_filling_one_cache_leave_readable_entries(tiny_config, tmp_path):
    script = textwrap.dedent(f"""
        import sys, open_clip, torch
        open_clip.add_model_config({str(tiny_config)!r})
        from lposs.models.backbones import DenseCLIP
        from lposs.models.text_cache import TextCache
        cache = TextCache({str(tmp_path)!r})
        emb, _ = DenseCLIP({TINY!r}, pretrained=None, text_cache=cache).text_embeddings(["cat", "dog", "cow"])
        torch.save(emb, sys.argv[1])
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"out{i}.pt")]) for i in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    cache = TextCache(tmp_path)
    entries = sorted(cache.folder.rglob("*.pt"))
    assert len(entries) == 3 and not list(cache.folder.rglob("*.tmp"))
    stored = [cache.get(entry.stem) for entry in entries]
    assert all(value is not None and value.shape == (32,) for value in stored)
    mine, _ = DenseCLIP(TINY, pretrained=None, text_cache=None).text_embeddings(["cat", "dog", "cow"])
    for i in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"out{i}.pt"), mine)


def test_physical_cores_and_native_bf16_are_read_from_cpuinfo(monkeypatch):
    from lposs import hardware

    info = ["processor\t: 0", "physical id\t: 0", "core id\t: 0", "processor\t: 1", "physical id\t: 0",
            "core id\t: 0", "processor\t: 2", "physical id\t: 0", "core id\t: 1", "flags\t: fpu avx512_bf16 sse"]
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: info)  # 3 logical CPUs on 2 cores (hyper-threads)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    assert hardware.physical_cores() == 2 and hardware.cpu_has_native_bf16()
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: ["flags\t: fpu avx2"])
    assert hardware.physical_cores() == 3 and not hardware.cpu_has_native_bf16()  # no core ids: usable CPUs
