"""The 2025 dense heads (lposs.models.heads_2025) against hand recomputations, and the releases' traps.

Random ViT-B-16-quickgelu weights on CPU. Each hand version is written from the heads' formulas, one window and one
attention head at a time, with weights read off the blocks, on every block's output captured from open_clip's OWN
forward (hooks) with the SCLIP position-embedding rule copied from the release (tests/test_heads.py). Only torch's
fused attention fast path is switched off there, as the releases' sequence-first OpenAI copies never take it
(CASS pairs heads from near-tied spectra, so rounding decides). Two grids: the native 14x14 and 10x14 (160x224).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from test_heads import clip_windows, layer_norm, naclip_addition, release_positional_embedding
from torch import nn

from lposs.models import loading
from lposs.models.heads import HEADS, dense_clip_features, head_settings
from lposs.models.heads_2025.outliers import fix_outliers
from lposs.models.heads_2025.sfr import sfr_matrix

HEADS_2025 = [name for name, record in HEADS.items() if "/heads_2025/" in record.origin]  # the traced heads
HEADS_MASKS = [name for name, record in HEADS.items() if "/heads_masks/" in record.origin]
ERRORS: dict[str, float] = {}  # max abs error of each hand check, printed at the end of the module (-s)
SIZES = [(224, 224), (160, 224)]


@pytest.fixture(scope="module")
def visual():
    """open_clip ViT-B-16-quickgelu (OpenAI's layout and activation), random seeded weights."""
    return loading.load_open_clip("ViT-B-16", None, None, seed=0, quick_gelu=True).visual.eval()


@pytest.fixture(scope="module", autouse=True)
def report_errors():
    yield
    for name, error in sorted(ERRORS.items()):
        print(f"max abs error {name}: {error:.2e}")


def blocks_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[1, 3, H, W]: a 3x3 board of flat colours plus noise (regions give ResCLIP's labels some extent)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(3, 3, 3, generator=g) * 4 - 2
    image = colours.repeat_interleave(-(-height // 3), 1)[:, :height].repeat_interleave(-(-width // 3), 2)[:, :, :width]
    return (image + 0.3 * torch.randn(3, height, width, generator=g))[None]


@contextmanager
def release_position_embedding(visual, x):
    native = visual.positional_embedding
    visual.positional_embedding = nn.Parameter(release_positional_embedding(visual, x, "sclip"))
    try:
        yield
    finally:
        visual.positional_embedding = native


def block_outputs(visual, x: torch.Tensor) -> list[torch.Tensor]:
    """[x_0, ..., x_11] of ONE window [1, 3, H, W], each [1 + N, W], from open_clip's own forward."""
    seen = []
    modules = [visual.ln_pre, *visual.transformer.resblocks[:-1]]
    hooks = [m.register_forward_hook(lambda _m, _a, out: seen.append(out[0].clone())) for m in modules]
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), release_position_embedding(visual, x):
            visual(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for hook in hooks:
            hook.remove()
    return seen


# ---------------------------------------------------------------------------------------------------
# Pieces by hand
# ---------------------------------------------------------------------------------------------------


def per_head(block, x):
    """x [L, W] -> [(q, k, v)] per attention head, each [L, d], from ln_1(x) and the in-projection."""
    width, n_heads = x.shape[-1], block.attn.num_heads
    h = layer_norm(x, block.ln_1)
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    q, k, v = (h @ w[i * width : (i + 1) * width].T + b[i * width : (i + 1) * width] for i in range(3))
    d = width // n_heads
    return [(q[:, i * d : (i + 1) * d], k[:, i * d : (i + 1) * d], v[:, i * d : (i + 1) * d]) for i in range(n_heads)]


def out_proj(block, outputs):
    return torch.cat(outputs, dim=-1) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias


def unit_features(visual, tokens):
    feats = layer_norm(tokens, visual.ln_post) @ visual.proj
    return feats / feats.norm(dim=-1, keepdim=True)


def soft(a, b):
    return torch.softmax(a @ b.T / math.sqrt(a.shape[-1]), dim=-1)


def cos(f):
    f = f / f.norm(dim=-1, keepdim=True)
    return f @ f.T


def thr(s, value=0.4):
    s = s.clone()
    s[s < value] = 0
    return s


def agg(s, f):
    return (s / (s.sum(dim=1, keepdim=True) + 1e-6)) @ f


def proxy_attention(s):
    logits = 3 * (s - s.mean())
    logits[logits < 0] = float("-inf")
    return torch.softmax(logits, dim=-1)


def hand_fix(x, grid, outliers):
    """Each outlier row: the mean of its non-outlier 8-neighbours (row-major positions), from the original rows."""
    gh, gw = grid
    bad, out = {int(i) for i in outliers}, x.clone()
    for i in bad:
        r, c = divmod(i, gw)
        near = [(r + dr) * gw + c + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                if (dr or dc) and 0 <= r + dr < gh and 0 <= c + dc < gw and (r + dr) * gw + c + dc not in bad]
        if near:
            out[i] = x[near].mean(dim=0)
    return out


def hand_lof(x, k=30, contamination=0.05):
    """Local outlier factor with each row's own k-distance as the reach distance (float64)."""
    x = x.double()
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    order = dist.argsort(dim=1)[:, 1 : k + 1]  # self first, dropped
    kdist = dist.gather(1, order)[:, -1]
    lrd = k / kdist
    lof = (lrd[order] / lrd[:, None]).mean(dim=1)
    values = lof.sort().values
    pos = (1 - contamination) * (len(values) - 1)  # linear interpolation, as torch.quantile
    cut = values[int(pos)] + (pos - int(pos)) * (values[int(pos) + 1] - values[int(pos)])
    return [i for i in range(len(lof)) if lof[i] > cut]


# ---------------------------------------------------------------------------------------------------
# The heads by hand
# ---------------------------------------------------------------------------------------------------


def hand_scclip(visual, xs, grid, c_on_thresholded=False, beta=0.4):
    block, x11 = visual.transformer.resblocks[-1], xs[11]
    outliers = hand_lof(x11[1:])
    s9 = cos(hand_fix(xs[9][1:], grid, outliers))
    s4 = thr(cos(xs[4][1:]), beta)
    c = proxy_attention(thr(s9, beta) if c_on_thresholded else s9)

    def attention(u):
        return out_proj(block, [((c + soft(k, k)) / 2) @ v for _, k, v in per_head(block, u)])

    y = agg(s4, attention(agg(thr(s9, beta), hand_fix(x11[1:], grid, outliers))) + 0.3 * x11[0])
    multi = xs[4] + xs[5] + xs[6] + xs[7] + xs[8] + xs[9] + xs[10]
    r = agg(s4, attention(multi[1:]) + 0.3 * multi[0])
    return unit_features(visual, y + r)


def hand_som(block, x, gain=1.5, count=10):
    maps = torch.stack([soft(q, k) for q, k, _ in per_head(block, x)])  # [heads, L, L]
    cls, self_attention = (maps[:, 0, 1:] * gain).mean(0), maps[:, 1:, 1:].diagonal(dim1=1, dim2=2).mean(0)
    salient = [i for i in range(len(cls)) if cls[i] > self_attention[i]]
    return sorted(salient, key=lambda i: -cls[i])[:count]


def hand_sfp(visual, xs, grid, c_on_thresholded=True, sim_thd=0.4):
    blocks = visual.transformer.resblocks
    block, x11 = blocks[-1], xs[11]
    outliers = hand_som(blocks[10], xs[10])
    s9 = cos(hand_fix(xs[9][1:], grid, outliers))
    s9t, s4 = thr(s9, sim_thd), thr(cos(xs[4][1:]), sim_thd)
    c = proxy_attention(s9t if c_on_thresholded else s9)
    pt = agg(s9t, hand_fix(x11[1:], grid, outliers))
    pt = out_proj(block, [((soft(k, k) + soft(q, q) + c) / 3) @ v for q, k, v in per_head(block, pt)])
    pt = agg(s4, pt + 0.3 * x11[0])
    multi = xs[4] + xs[5] + xs[6] + xs[7] + xs[8] + xs[9] + xs[10]
    ps = agg(s4, out_proj(block, [c @ v for _, _, v in per_head(block, multi[1:])]) + 0.3 * multi[0])
    return unit_features(visual, pt + ps)


def hand_polar(m, steps):
    a = m.T @ m
    n = a.norm()
    eye = torch.eye(len(m))
    y, z = a / n + 1e-6 * eye, eye
    for _ in range(steps):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return m @ z / n.sqrt()


def hand_pearl(visual, xs, grid, alpha_kk=0.08, steps=5, exact_polar=False):
    block = visual.transformer.resblocks[-1]
    outputs = []
    for q, k, v in per_head(block, xs[11]):
        w = q.norm(dim=1)
        w[0] = 0
        w = w / (w.sum() + 1e-6)
        qc, kc = q - w @ q, k - w @ k
        m = kc.T @ qc
        if exact_polar:
            u, _, vh = torch.linalg.svd(m)
            rotation = u @ vh
        else:
            rotation = hand_polar(m, steps)
        logits = q @ (k @ rotation).T / 8 + alpha_kk * kc @ kc.T / 8
        outputs.append(torch.softmax(logits, dim=-1) @ v)
    return unit_features(visual, out_proj(block, outputs)[1:])


def hand_pamr(image, scores, iterations=10, dilations=(8, 16)):
    """PAMR from its formula: replicate borders, unbiased std of the dilated 3x3 windows (all dilations together),
    affinity = mean over channels of -|x_i - x_j| / (1e-8 + 0.1 std_i), softmax over the 16 neighbours."""
    height, width = image.shape[1:]

    def shift(t, dy, dx):  # t[..., clamp(y + dy), clamp(x + dx)]
        rows = torch.arange(height).add(dy).clamp(0, height - 1)
        cols = torch.arange(width).add(dx).clamp(0, width - 1)
        return t[..., rows[:, None], cols[None, :]]

    units = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    windows = torch.stack([shift(image, dy * d, dx * d) for d in dilations for dy, dx in units], dim=1)
    spread = windows.std(dim=1)  # [3, H, W]
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in units if (dy, dx) != (0, 0)]
    logits = torch.stack([(-(image - shift(image, dy, dx)).abs() / (1e-8 + 0.1 * spread)).mean(0)
                          for dy, dx in offsets])
    affinity = torch.softmax(logits, dim=0)  # [16, H, W]
    for _ in range(iterations):
        scores = sum(affinity[p] * shift(scores, dy, dx) for p, (dy, dx) in enumerate(offsets))
    return scores


def hand_sfr(labels, sigma=5.0):
    """The SFR matrix [1 + N, 1 + N] from patch labels [gh, gw], pair by pair (exact fractions for the path)."""
    gh, gw = labels.shape
    n, lab = gh * gw, labels.flatten().tolist()
    pos = [divmod(i, gw) for i in range(n)]
    steps = [[max(abs(pos[i][0] - pos[j][0]), abs(pos[i][1] - pos[j][1])) for j in range(n)] for i in range(n)]
    top = max(map(max, steps))
    same = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if lab[i] != lab[j]:
                continue
            path = [tuple(round(Fraction(pos[i][a] * (top - m) + pos[j][a] * m, top)) for a in (0, 1))
                    for m in range(steps[i][j] + 1)]  # only a prefix of the segment: the step uses the global max
            on_label = all(lab[r * gw + c] == lab[i] for r, c in path)
            same[i, j] = 1.0 if on_label else math.exp(-steps[i][j] / top)
    size = min(n, int(6 * sigma + 1)) | 1
    taps = {o: math.exp(-(o**2) / (2 * sigma**2)) for o in range(-(size // 2), size // 2 + 1)}
    total = sum(taps.values())
    blur = torch.tensor([[taps.get(j - i, 0.0) / total for j in range(n)] for i in range(n)], dtype=torch.float64)
    rows = torch.relu(same @ blur)
    rows = rows / (rows.sum(dim=1, keepdim=True) + 1e-8)
    return F.pad(rows, (1, 0, 1, 0)).float()


def hand_resclip(visual, xs, image, grid, text, temp_thd, sfr_in_fp16=True, fp16_product=True, sfr_of=hand_sfr):
    blocks = visual.transformer.resblocks
    block, omega = blocks[-1], naclip_addition(*grid, 5.0)
    rcs = [torch.stack([soft(q, k) for q, k, _ in per_head(blocks[b - 1], xs[b - 1])]) for b in (6, 7, 8, 9)]
    rcs = sum(rcs) / 4  # [heads, L, L]
    heads = per_head(block, xs[11])
    first = [2.0 * (0.7 * torch.softmax(k @ k.T / 8 + omega, dim=-1) + 0.3 * rcs[h]) @ v
             for h, (_, k, v) in enumerate(heads)]
    feats = unit_features(visual, out_proj(block, first)[1:])  # [N, D]
    logits = (feats @ text.T).T.reshape(1, -1, *grid)
    logits = F.interpolate(logits, size=image.shape[1:], mode="bilinear", align_corners=False)[0]
    probs = torch.softmax(40 * hand_pamr(image, logits), dim=0)
    pixels = probs.argmax(0)
    pixels[probs.max(0).values < temp_thd] = 0
    labels = torch.tensor([[torch.bincount(pixels[16 * r : 16 * r + 16, 16 * c : 16 * c + 16].flatten()).argmax()
                            for c in range(grid[1])] for r in range(grid[0])])  # the most frequent (smallest on ties)
    sfr = sfr_of(labels)
    sfr = sfr / sfr.max()
    if sfr_in_fp16:
        sfr = sfr.half().float()
    lam_sfr = (sfr * 0.7).half().float() if fp16_product else sfr * 0.7  # float32 product, rounded to float16
    second = []
    for h, (_, k, v) in enumerate(heads):
        logits = 2.2 * (0.3 * (k @ k.T / 8) + lam_sfr) + omega
        second.append(2.0 * (0.7 * torch.softmax(logits, dim=-1) + 0.3 * rcs[h]) @ v)
    return unit_features(visual, out_proj(block, second)[1:]), labels


def hand_cass(visual, xs, grid, proxy, rescale=True):
    """proxy [h', w', 768]; svd_lowrank drawn once per CLIP head, in head order (seed the RNG before)."""
    from scipy.optimize import linear_sum_assignment

    block, n_heads = visual.transformer.resblocks[-1], 12
    heads = [(k[1:], v[1:]) for _, k, v in per_head(block, xs[11])]
    k_all = torch.stack([k for k, _ in heads])
    dino = proxy.half().reshape(*proxy.shape[:2], n_heads, 64).permute(2, 3, 0, 1).contiguous()
    dino = F.interpolate(dino, size=grid, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    dino = (dino - dino.min()) / (dino.max() - dino.min()) * (k_all.max() - k_all.min()) + k_all.min()
    a_clip = [k @ k.T * 0.125 for k, _ in heads]
    a_dino = [dk @ dk.T * 0.125 for dk in dino]  # float16

    def spectrum(a):
        values = torch.linalg.eigvalsh(a.double()).sort(descending=True).values[:20]
        values = values / values.norm()
        return (values / values.abs().sum()).sort().values

    cost = torch.zeros(n_heads, n_heads)
    for i in range(n_heads):
        for j in range(n_heads):
            cost[i, j] = 1 - (spectrum(a_dino[i]) - spectrum(a_clip[j])).abs().sum()
    _, col = linear_sum_assignment(cost.numpy())
    omega = naclip_addition(*grid, 5.0)[1:, 1:]
    outputs = []
    for h, (_, v) in enumerate(heads):
        weight = 1 - cost[h, col[h]]
        u, s, vv = torch.svd_lowrank(a_dino[col[h]].double(), q=10)
        if rescale:
            s = (s - s.min()) / (s.max() - s.min()) * (1.5 * s.max() - 0.5 * s.min()) + 0.5 * s.min()
        approx = u @ torch.diag(s) @ vv.T
        approx.fill_diagonal_(0)
        approx = (approx - approx.min()) / (approx.max() - approx.min())
        approx = approx * (a_clip[h].max() - a_clip[h].min()) + a_clip[h].min()
        attention = ((10 * weight * approx + a_clip[h]) / (10 * weight + 1)).float()
        outputs.append(torch.softmax(attention + omega, dim=-1) @ v)
    return unit_features(visual, out_proj(block, outputs)), col


# ---------------------------------------------------------------------------------------------------
# Each head against its hand version, at 224x224 (14x14) and 160x224 (10x14)
# ---------------------------------------------------------------------------------------------------


def unit_text(count: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(count, 512, generator=torch.Generator().manual_seed(seed)), dim=-1)


def dino_keys(side: int, seed: int) -> torch.Tensor:
    """Random DINO-like keys [1, side, side, 768] on the square DINO B/8 grid CASS uses (min(H, W) / 8)."""
    return torch.randn(1, side, side, 768, generator=torch.Generator().manual_seed(seed))


def check(name, feats, expected, size, tolerance=1e-5):
    error = (feats.reshape(expected.shape) - expected).abs().max().item()
    ERRORS[f"{name} {size[0]}x{size[1]}"] = error
    assert error < tolerance, (name, size, error)
    return error


# With random weights the patch similarities of x_4 and x_9 reach 0.4 only on the diagonal: the low thresholds make
# the similarity-weighted means (Agg) mix patches too.
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("head, hand, params", [
    ("scclip", hand_scclip, {}), ("scclip", hand_scclip, {"beta": 0.05}),
    ("sfp", hand_sfp, {}), ("sfp", hand_sfp, {"sim_thd": 0.05}),
    ("pearl", hand_pearl, {}), ("pearl", hand_pearl, {"alpha_kk": 0.3}),
])
def test_head_equals_hand_recomputation(visual, head, hand, params, size):
    x = clip_windows(1, *size, seed=11)
    grid = (size[0] // 16, size[1] // 16)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, head, **params)
        expected = hand(visual, block_outputs(visual, x), grid, **params)
    assert feats.shape == (1, *grid, 512)
    check(f"{head}{params or ''}", feats, expected, size)


@pytest.mark.parametrize("size, temp_thd", [((224, 224), 0.5), ((160, 224), 0.3)])
def test_resclip_equals_hand_recomputation(visual, size, temp_thd):
    x, text = blocks_image(*size), unit_text(6, seed=2)
    grid = (size[0] // 16, size[1] // 16)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, "resclip", text=text, temp_thd=temp_thd)
        expected, labels = hand_resclip(visual, block_outputs(visual, x), x[0], grid, text, temp_thd)
    assert len(labels.unique()) >= 2  # the feedback has regions to work with
    assert feats.shape == (1, *grid, 512)
    check("resclip", feats, expected, size)  # a float16 rounding tie of the feedback flips at ~2e-6


@pytest.mark.parametrize("size", SIZES)
def test_cass_equals_hand_recomputation(visual, size):
    x, proxy = clip_windows(1, *size, seed=12), dino_keys(min(size) // 8, seed=3)
    grid = (size[0] // 16, size[1] // 16)
    with torch.no_grad():
        torch.manual_seed(5)
        feats = dense_clip_features(visual, x, "cass", proxy=proxy)
        torch.manual_seed(5)
        expected, _ = hand_cass(visual, block_outputs(visual, x), grid, proxy[0])
    assert feats.shape == (1, *grid, 512)
    check("cass", feats, expected, size)


# ---------------------------------------------------------------------------------------------------
# The releases' traps: the right choice matches the hand version, the wrong one measurably does not
# ---------------------------------------------------------------------------------------------------


def test_scclip_attends_with_unthresholded_s9_and_sfp_with_thresholded(visual):
    x = clip_windows(1, 224, 224, seed=13)
    with torch.no_grad():
        xs = block_outputs(visual, x)
        for head, hand, right in [("scclip", hand_scclip, False), ("sfp", hand_sfp, True)]:
            feats = dense_clip_features(visual, x, head).reshape(196, 512)
            assert (feats - hand(visual, xs, (14, 14), c_on_thresholded=right)).abs().max() < 1e-5
            assert (feats - hand(visual, xs, (14, 14), c_on_thresholded=not right)).abs().max() > 5e-3, head


@pytest.mark.parametrize("size", SIZES)
def test_sfr_matrix_equals_pair_by_pair(size):
    grid = (size[0] // 16, size[1] // 16)
    labels = torch.randint(0, 3, grid, generator=torch.Generator().manual_seed(size[0]))
    labels[: grid[0] // 2, : grid[1] // 2] = 4  # one large region: long paths that stay on their label
    torch.testing.assert_close(sfr_matrix(labels), hand_sfr(labels), atol=1e-7, rtol=0)
    plain = sfr_matrix(labels, 5.0, delete_same_entity=False)  # no path check: same-label pairs all count 1
    assert (plain - sfr_matrix(labels)).abs().max() > 1e-3 and torch.all(plain[0] == 0) and torch.all(plain[:, 0] == 0)


def test_resclip_feedback_is_a_float16_product(visual):
    """With the SFR matrix itself computed alike (checked above), the float16 map and product are what remains."""
    x, text = blocks_image(224, 224, seed=1), unit_text(6, seed=4)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, "resclip", text=text, temp_thd=0.5).reshape(196, 512)
        xs = block_outputs(visual, x)
        run = lambda **kw: hand_resclip(visual, xs, x[0], (14, 14), text, 0.5, sfr_of=sfr_matrix, **kw)[0]
        right, product32, map32 = run(), run(fp16_product=False), run(sfr_in_fp16=False, fp16_product=False)
    assert (feats - right).abs().max() < 5e-7
    assert (feats - product32).abs().max() > 4e-6  # ~1e-5 here, ~6e-5 in the releases' harness
    assert (feats - map32).abs().max() > 4e-6


def test_pearl_takes_exactly_five_newton_schulz_steps(visual):
    x = clip_windows(1, 224, 224, seed=14)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, "pearl").reshape(196, 512)
        xs = block_outputs(visual, x)
        assert (feats - hand_pearl(visual, xs, (14, 14), steps=5)).abs().max() < 1e-5
        for wrong in (hand_pearl(visual, xs, (14, 14), steps=6), hand_pearl(visual, xs, (14, 14), exact_polar=True)):
            assert (feats - wrong).abs().max() > 1e-4  # 5 steps are far from the converged polar factor
        assert (dense_clip_features(visual, x, "pearl", polar_iters=6).reshape(196, 512) - feats).abs().max() > 1e-4


def test_outlier_positions_are_row_major_not_divided_by_the_row_count():
    """The releases place outlier i at (i // rows, i % rows): right on square grids only (and an IndexError on
    many others). Here it is (i // cols, i % cols), so 10x14 windows work; 14x14 ones are unchanged."""
    gh, gw = 10, 14
    x = torch.randn(gh * gw, 4, generator=torch.Generator().manual_seed(0))
    outliers = torch.tensor([25, 139])  # (1, 11) and the last patch (9, 13)
    fixed = fix_outliers(x, (gh, gw), outliers)
    torch.testing.assert_close(fixed, hand_fix(x, (gh, gw), outliers.tolist()))
    r, c = 1, 11
    neighbours = [(r + dr) * gw + c + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
    torch.testing.assert_close(fixed[25], x[neighbours].mean(0))
    others = [i for i in range(gh * gw) if i not in (25, 139)]
    assert torch.equal(fixed[others], x[others])
    assert (25 // gh, 25 % gh) != (r, c) and 139 // gh >= gh  # the release's rule: another patch, then out of range
    assert all((i // 14, i % 14) == divmod(i, 14) for i in range(196))  # square: both rules agree


def test_outlier_fix_keeps_an_isolated_outlier_and_finding_none_changes_nothing():
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(1))
    everything = torch.arange(9)
    assert torch.equal(fix_outliers(x, (3, 3), everything), x)  # no non-outlier neighbour: kept
    assert torch.equal(fix_outliers(x, (3, 3), torch.tensor([], dtype=torch.long)), x)  # SC-CLIP would crash


# ---------------------------------------------------------------------------------------------------
# Per-window statistics, CASS's random low-rank step, parameters
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", list(HEADS_2025))
def test_windows_are_independent_of_their_batch(visual, head):
    x = torch.cat([blocks_image(160, 224, seed=2), clip_windows(1, 160, 224, seed=15)])
    params = {"text": unit_text(5, seed=6), "temp_thd": 0.3} if head == "resclip" else {}
    proxy = dino_keys(20, seed=7).repeat(2, 1, 1, 1) * torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    params |= {"proxy": proxy} if head == "cass" else {}
    with torch.no_grad():
        torch.manual_seed(0)
        batch = dense_clip_features(visual, x, head, **params)
        torch.manual_seed(0)  # CASS draws its low-rank bases window after window
        alone = [dense_clip_features(visual, x[i : i + 1], head,
                                     **{k: (v[i : i + 1] if k == "proxy" else v) for k, v in params.items()})
                 for i in range(2)]
    torch.testing.assert_close(batch, torch.cat(alone), atol=1e-6, rtol=0)


def test_cass_low_rank_step_follows_the_global_rng(visual):
    x, proxy = clip_windows(1, 224, 224, seed=16), dino_keys(28, seed=8)
    with torch.no_grad():
        runs = []
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            runs.append(dense_clip_features(visual, x, "cass", proxy=proxy))
        torch.manual_seed(1)
        plain = dense_clip_features(visual, x, "cass", proxy=proxy, rescale_singular=False)
        torch.manual_seed(1)
        expected, _ = hand_cass(visual, block_outputs(visual, x), (14, 14), proxy[0], rescale=False)
    assert torch.equal(runs[0], runs[1]) and (runs[0] - runs[2]).abs().max() > 1e-7
    check("cass{'rescale_singular': False}", plain, expected, (224, 224))
    assert (plain - runs[0]).abs().max() > 1e-4


def test_parameters_are_validated_by_name(visual):
    x = clip_windows(1, 224, 224)
    assert {HEADS[head].kind for head in HEADS_2025} == {"traced"} and len(HEADS_2025) == 5
    assert set(HEADS_MASKS) == {"trident", "corrclip", "lavg"}
    for head in [*HEADS_2025, *HEADS_MASKS]:
        assert head_settings(head)["interpolation"] == "sclip"
        with pytest.raises(ValueError, match=f"head '{head}' has no parameter 'bogus'"):
            head_settings(head, {"bogus": 1})
    with pytest.raises(ValueError, match="has no parameter 'sigma'"):
        dense_clip_features(visual, x, "scclip", sigma=5.0)
    with pytest.raises(ValueError, match="has no parameter 'temp_thd'"):
        dense_clip_features(visual, x, "pearl", temp_thd=0.5)
    with pytest.raises(ValueError, match="'resclip' needs text and temp_thd"):
        dense_clip_features(visual, x, "resclip")
    with pytest.raises(ValueError, match="'resclip' needs temp_thd"):
        dense_clip_features(visual, x, "resclip", text=unit_text(3, seed=0))
    with pytest.raises(ValueError, match="'cass' needs proxy = DINO's last-block keys"):
        dense_clip_features(visual, x, "cass")
    with pytest.raises(ValueError, match="'scclip' takes no proxy"):
        dense_clip_features(visual, x, "scclip", proxy=torch.zeros(1, 28, 28, 768))


# ---------------------------------------------------------------------------------------------------
# CASS's text side
# ---------------------------------------------------------------------------------------------------


def hand_cass_logits(features, text, global_embedding, h, a, g):
    """cass_segmentor.py:98-212 with the release's own calls (scikit-learn's cosine_distances, scipy's Ward)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.metrics.pairwise import cosine_distances

    clusters = fcluster(linkage(squareform(cosine_distances(text.numpy())), method="ward"), t=h,
                        criterion="distance") - 1
    sims = (global_embedding @ text.T)[0]
    feats = features.reshape(-1, features.shape[-1])
    adjusted = text.clone()
    for cluster in range(clusters.max() + 1):
        members = [i for i in range(len(text)) if clusters[i] == cluster]
        query = max(members, key=lambda i: float(sims[i]))
        top = (feats @ text[query]).topk(2).indices
        mean = feats[top].mean(0)
        mixed = (1 - a) * text[query] + a * mean / mean.norm()
        adjusted[query] = mixed / mixed.norm()
    return ((1 - g) * feats @ adjusted.T + g * sims).reshape(*features.shape[:3], -1), clusters


def test_cass_text_side_equals_hand_recomputation(visual):
    from lposs.models.heads_2025.cass_text import cass_logits, clip_image_embedding

    g = torch.Generator().manual_seed(9)
    text = F.normalize(torch.randn(8, 512, generator=g), dim=-1)
    text[1:4] = F.normalize(text[0] + 0.02 * torch.randn(3, 512, generator=g), dim=-1)  # a cluster of 4
    features = F.normalize(torch.randn(1, 4, 5, 512, generator=g), dim=-1)
    x = clip_windows(1, 224, 224, seed=17)
    with torch.no_grad():
        global_embedding = clip_image_embedding(visual, x)
        torch.testing.assert_close(global_embedding, F.normalize(visual(x), dim=-1), atol=1e-5, rtol=0)
    ours = cass_logits(features, text, global_embedding, 0.5, 0.3, 0.25)
    expected, clusters = hand_cass_logits(features, text, global_embedding, 0.5, 0.3, 0.25)
    assert 1 < clusters.max() + 1 < len(text)  # some queries share a cluster, not all
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    plain = cass_logits(features, text, global_embedding, 0.5, 0.0, 0.0)
    torch.testing.assert_close(plain, features @ text.T, atol=1e-6, rtol=0)  # no weights: plain cosines


class _KeysProxy:
    """Stands in for DINO B/8 in DenseCLIP: random last-block keys on the window's square /8 grid."""

    patch_size, id = 8, "random-keys"

    def dense_features_multi(self, windows, features):
        side = min(windows.shape[2:]) // 8
        return {"k_raw": torch.randn(len(windows), side, side, 768, generator=torch.Generator().manual_seed(4))}


class _Graph:
    def dense_features(self, windows):  # [B, 14, 14, 8]: a graph model at the CLIP grid
        return F.normalize(torch.rand(len(windows), 14, 14, 8, generator=torch.Generator().manual_seed(5)), dim=-1)


@pytest.mark.parametrize("global_from", ["image", "window"])
def test_cass_text_step_makes_the_seeds_in_extract_features(global_from):
    from lposs.image_features import extract_features
    from lposs.models.backbones import CLIP_MEAN, CLIP_STD, DenseCLIP
    from lposs.models.heads_2025.cass_text import cass_logits, clip_image_embedding

    params = {"global_semantics_weight": 0.25, "mean_vector_weight": 0.3, "h_threshold": 0.5,
              "global_from": global_from}
    vlm = DenseCLIP("ViT-B-16", None, head="cass", proxy=_KeysProxy(), quick_gelu=True, text_cache=None,
                    text_params=params)
    assert vlm.adjusts_queries and "-global_semantics_weight_0.25" in vlm.id
    image = torch.rand(3, 200, 290, generator=torch.Generator().manual_seed(6))  # resized to 224 x 325
    names = ["sky", "road; street", "car"]
    torch.manual_seed(0)  # CASS's head draws its low-rank bases from the global generator
    features = extract_features(image, names, vlm, _Graph(), crop=224, stride=112, short_side=224, long_side=2048)
    emb, _ = vlm.text_embeddings(names)
    crops = torch.stack([features.image_resized[:, y1:y2, x1:x2] for y1, y2, x1, x2 in features.layout])
    torch.manual_seed(0)
    dense = vlm.dense_features(crops)  # [B, 14, 14, 512]
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    with torch.no_grad():
        if global_from == "image":  # 224 x 325: the patch convolution uses 224 x 320
            whole = ((features.image_resized - mean) / std)[:, :224, :320]
            global_embedding = clip_image_embedding(vlm.model.visual, whole[None])
        else:
            global_embedding = torch.cat([clip_image_embedding(vlm.model.visual, ((c - mean) / std)[None])
                                          for c in crops])
    expected = cass_logits(dense, emb, global_embedding, 0.5, 0.3, 0.25).reshape(-1, len(emb))
    torch.testing.assert_close(features.seeds, expected, atol=1e-5, rtol=0)
    plain = (dense.reshape(-1, 512) @ emb.T)
    assert (features.seeds - plain).abs().max() > 1e-3  # the step changed the seeds
    with pytest.raises(ValueError, match="unknown \\['h'\\]"):
        DenseCLIP("ViT-B-16", None, head="cass", proxy=_KeysProxy(), quick_gelu=True, text_cache=None,
                  text_params={**params, "h": 1})
    with pytest.raises(ValueError, match="head 'sclip' has none"):
        DenseCLIP("ViT-B-16", None, head="sclip", quick_gelu=True, text_cache=None, text_params=params)
