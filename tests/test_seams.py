"""The seams of `lposs.segmentation`: the whole chain seeds -> patch graph -> LP -> window merge -> pixel LP ->
background rule, checked against class scores built by hand from docs/method.md, not from `propagate_features`.

The components have their own tests; these pin down what joins them: which features make the graph, the
patch centres (window origin + patch centre), the merge (average over the windows covering a pixel), what
the pixel refinement is given, the cosine scale of the softmax rule and the order "resize, then softmax".
Everything runs in float64 on 4 windows of a 47x53 resized image (32-pixel crops, 8x8 patches of 4 pixels),
so the hand-built answer is exact up to rounding: the linear systems are solved with `torch.linalg.solve`,
and the code under test runs its CG to convergence (maxiter 300, tol 1e-13). The one float32 input left
is the patch centres inside `patch_graph` (exact small numbers, but their distances are float32): the
scores agree to ~1e-7 of their scale, so the tolerance below is 1e-6 of the scale.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lposs.core.color import scaled_lab
from lposs.core.refine import refine_pixels
from lposs.models import protocols
from lposs.segmentation import extract_features, predict_labels, propagate_features

CLASSES = ["sky", "road;street", "car", "tree"]  # C' = 5 synonym columns, K = 4 classes, 0 = background
PARAMS = dict(k=12, gamma=3.0, sigma=0.003, p=2.0, alpha=0.9, r=7, tau=0.02, maxiter=300, tol=1e-13)
SOFTMAX = protocols.resolve("sclip", "voc21")  # logit_scale 65, prob_thd 0.1, area_thd 0.1
RULES = {"synonyms": None, "softmax": SOFTMAX}
RTOL = 1e-6  # of the score scale (see the module docstring)


class RandomProjection:
    """Stand-in backbone: each 4x4 patch's pixels times a fixed random matrix, L2-normalised; random text.

    Unlike colour means, no two patches of the test image get the same feature (no ties in the kNN).
    """

    def __init__(self, seed, patch=4, dim=6):
        self.patch_size, self.dim, self.id = patch, dim, f"projection{seed}"
        self.proj = torch.randn(3 * patch * patch, dim, generator=torch.Generator().manual_seed(seed))

    def dense_features(self, windows):  # [B, 3, crop, crop] -> [B, g, g, D]
        cells = F.pixel_unshuffle(windows, self.patch_size).permute(0, 2, 3, 1)  # [B, g, g, 3 * patch^2]
        return F.normalize(cells @ self.proj, dim=-1)

    def text_embeddings(self, class_names):
        columns = [(i, name.strip()) for i, c in enumerate(class_names) for name in c.split(";")]
        emb = torch.randn(len(columns), self.dim, generator=torch.Generator().manual_seed(1))
        return F.normalize(emb, dim=-1), torch.tensor([i for i, _ in columns])


@pytest.fixture(scope="module")
def features32():
    """A smooth random 45x51 image -> resized 47x53 -> windows at y 0, 15 and x 0, 21 (uneven overlaps)."""
    field = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    field = F.interpolate(field, size=(45, 51), mode="bilinear", align_corners=False)[0]
    image = (field.permute(1, 2, 0) * 255).round().byte().numpy()
    feats = extract_features(image, CLASSES, RandomProjection(0), RandomProjection(2), crop=32, stride=24,
                             short_side=47)
    assert feats.resized_hw == (47, 53) and feats.grid == 8 and len(feats.layout) == 4
    return feats


@pytest.fixture(scope="module")
def features(features32):
    """The same features in float64, so the code under test and the hand-built answer are both exact."""
    return dataclasses.replace(features32, seeds=features32.seeds.double(), vm_feats=features32.vm_feats.double(),
                               image_resized=features32.image_resized.double())


# ------------------------------------------------------------------------------ the chain, by hand
def normalised(W):
    """D^-1/2 W D^-1/2, a node without edges keeping degree 1."""
    d = W.sum(1)
    d = torch.where(d == 0, torch.ones_like(d), d).sqrt()
    return W / d[:, None] / d[None, :]


def hand_centres(layout, grid, patch):
    """(y, x) of every patch centre in resized-image pixels, window by window, row-major inside a window."""
    return torch.tensor([(y1 + (i + 0.5) * patch, x1 + (j + 0.5) * patch)
                         for y1, _, x1, _ in layout for i in range(grid) for j in range(grid)], dtype=torch.float64)


def hand_patch_graph(feats, centres, k, gamma, sigma, p):
    """Dense S: w_ij = max(cos, 0)^gamma exp(-sigma d^p) to the k most similar nodes (self included),
    symmetrised W + W^T, zero diagonal, normalised."""
    n = feats.shape[0]
    cos = feats @ feats.T
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        nbrs = cos[i].argsort(descending=True)[:k]
        dist = (centres[nbrs] - centres[i]).norm(dim=1)
        W[i, nbrs] = cos[i, nbrs].clamp(min=0) ** gamma * torch.exp(-sigma * dist**p)
    W = W + W.T
    W.fill_diagonal_(0)
    return normalised(W)


def hand_pixel_graph(image, r, tau):
    """Dense pixel S: exp(-||lab_i - lab_j|| / tau) within the r x r square around each pixel (not itself)."""
    height, width = image.shape[1:]
    lab = scaled_lab(image).reshape(3, -1).T  # [P, 3]
    yx = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")).reshape(2, -1).T
    near = (yx[:, None] - yx[None]).abs().amax(-1) <= r // 2  # [P, P]
    dist = torch.cdist(lab, lab, compute_mode="donot_use_mm_for_euclid_dist")
    W = torch.where(near, torch.exp(-dist / tau), torch.zeros_like(dist))
    W.fill_diagonal_(0)
    return normalised(W)


def lp_solve(S, Y, alpha):
    """The exact label propagation F = (I - alpha S)^-1 Y."""
    return torch.linalg.solve(torch.eye(S.shape[0], dtype=S.dtype) - alpha * S, Y)


def hand_merge(node_scores, layout, grid, size, crop):
    """Node scores [N, C'] -> canvas [C', H', W']: each window's g x g block upsampled to the crop,
    summed where the windows lie, divided by how many windows cover each pixel."""
    blocks = node_scores.reshape(len(layout), grid, grid, -1).permute(0, 3, 1, 2)  # [B, C', g, g]
    total = torch.zeros(node_scores.shape[1], *size, dtype=node_scores.dtype)
    count = torch.zeros(size, dtype=node_scores.dtype)
    for block, (y1, y2, x1, x2) in zip(blocks, layout):
        up = F.interpolate(block[None], size=(crop, crop), mode="bilinear", align_corners=False)[0]
        total[:, y1:y2, x1:x2] += up[:, : y2 - y1, : x2 - x1]
        count[y1:y2, x1:x2] += 1
    return total / count


def resize(x, size):
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def max_per_class(scores, owner):
    return torch.stack([scores[owner == c].amax(0) for c in range(int(owner.max()) + 1)])


def hand_background(canvas, owner, rule, cosine_scale, size):
    """synonyms: max per class, then resize. softmax: resize, x logit_scale x cosine_scale, softmax over all
    synonym columns, max per class."""
    if rule is None:
        return resize(max_per_class(canvas, owner), size)
    logits = resize(canvas, size) * (rule["logit_scale"] * cosine_scale)
    return max_per_class(logits.softmax(0), owner)


def hand_canvas(feats, mode, k, gamma, sigma, p, alpha, r, tau, **_):
    """The canvas [C', H', W'] of one mode, and its cosine scale (1 - alpha per reference LP solve)."""
    node_scores, scale = feats.seeds, 1.0
    if mode != "maskclip":
        centres = hand_centres(feats.layout, feats.grid, feats.crop // feats.grid)
        node_scores = lp_solve(hand_patch_graph(feats.vm_feats, centres, k, gamma, sigma, p), feats.seeds, alpha)
        scale *= 1 - alpha
    canvas = hand_merge(node_scores, feats.layout, feats.grid, feats.resized_hw, feats.crop)
    if mode == "lposs+":
        S = hand_pixel_graph(feats.image_resized, r, tau)
        canvas = lp_solve(S, canvas.reshape(canvas.shape[0], -1).T, alpha).T.reshape(canvas.shape)
        scale *= 1 - alpha
    return canvas, scale


def hand_labels(scores, rule):
    """argmax; softmax rule: a foreground class winning <= area_thd of the foreground pixels drops out,
    then pixels whose top probability is below prob_thd go to class 0."""
    if rule is None:
        return scores.argmax(0)
    area = torch.bincount(scores.argmax(0).flatten(), minlength=scores.shape[0])
    dropped = [c for c in range(1, scores.shape[0]) if area[c] <= rule["area_thd"] * area[1:].sum()]
    scores = scores.clone()
    scores[dropped] = 0
    labels = scores.argmax(0)
    labels[scores.amax(0) < rule["prob_thd"]] = 0
    return labels


def assert_scores_close(actual, expected, rtol=RTOL):
    """Equal within rtol of the scores' scale (max |expected|), elementwise."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * expected.abs().max().item())


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("rule_name", RULES)
@pytest.mark.parametrize("mode", ["maskclip", "lposs", "lposs+"])
def test_scores_and_labels_equal_the_hand_built_chain(features, mode, rule_name):
    """Every mode under both background rules: class scores [K, 45, 51] and labels equal docs/method.md's chain."""
    rule = RULES[rule_name]
    canvas, scale = hand_canvas(features, mode, **PARAMS)
    expected = hand_background(canvas, features.owner, rule, scale, features.original_hw)
    scores = propagate_features(features, mode=mode, background=rule, **PARAMS)
    assert scores.shape == (4, 45, 51)
    assert_scores_close(scores, expected)
    labels = predict_labels(features, mode=mode, background=rule, **PARAMS)
    assert torch.equal(labels, hand_labels(expected, rule))
    assert len(labels.unique()) > 1  # not a degenerate map that any chain would give


def test_float32_path_matches_the_float64_hand_built_chain(features32, features):
    """The features as extract_features gives them (float32), LPOSS+ under the softmax rule: the longest
    chain agrees with the exact float64 answer to float32 accuracy (1e-5 of the score scale)."""
    canvas, scale = hand_canvas(features, "lposs+", **PARAMS)
    expected = hand_background(canvas, features.owner, SOFTMAX, scale, features.original_hw)
    scores = propagate_features(features32, mode="lposs+", background=SOFTMAX, **PARAMS)
    assert scores.dtype == torch.float32
    assert_scores_close(scores.double(), expected, rtol=1e-5)


@pytest.mark.parametrize("refiner", ["pamr", "best"])
def test_other_refiners_get_the_merged_canvas_and_keep_cosine_scale(features, refiner):
    """A non-reference refiner is given the merged LPOSS canvas at the resized size; the softmax rule then
    scales by (1 - alpha) only (the refiner keeps the size of its input or returns probabilities)."""
    canvas, scale = hand_canvas(features, "lposs", **PARAMS)
    refined = refine_pixels(features.image_resized, canvas, refiner=refiner)  # the component as the oracle
    expected = hand_background(refined, features.owner, SOFTMAX, scale, features.original_hw)
    params = {**PARAMS, "r": None, "tau": None}  # the refiner's own settings
    scores = propagate_features(features, mode="lposs+", refiner=refiner, background=SOFTMAX, **params)
    assert_scores_close(scores, expected)


def test_the_fixture_keeps_the_seams_apart(features):
    """The checks above can fail: on this fixture, each seam done differently by hand moves the LPOSS+
    softmax scores by more than 100 x RTOL (a resize that changes the size, a spatial term that matters)."""
    owner, size = features.owner, features.original_hw
    canvas, scale = hand_canvas(features, "lposs+", **PARAMS)
    right = hand_background(canvas, owner, SOFTMAX, scale, size)
    flat, _ = hand_canvas(features, "lposs+", **{**PARAMS, "sigma": 0.0})  # exp(0) = 1: no spatial term
    probs = (canvas * (SOFTMAX["logit_scale"] * scale)).softmax(0)  # at the resized size
    resized_probs = (resize(canvas, size) * (SOFTMAX["logit_scale"] * scale)).softmax(0)
    wrong = {
        "no spatial term": hand_background(flat, owner, SOFTMAX, scale, size),
        "softmax, then resize": resize(max_per_class(probs, owner), size),
        "no cosine scale": hand_background(canvas, owner, SOFTMAX, 1.0, size),
        "mean over synonyms": torch.stack([resized_probs[owner == c].mean(0) for c in range(4)]),
    }
    for name, scores in wrong.items():
        assert (scores - right).abs().max() > 100 * RTOL * right.abs().max(), name


# ------------------------------------------------------------------------------ the released numbers (slow)
@pytest.mark.slow
def test_refinement_benchmark_reference_rows_on_camvid_val(camvid_root):
    """benchmarks.refine on CamVid val (101 images), reference refiner, 1 thread: the row of docs/benchmarks.md
    coarse 73.06 / 63.25, refined 74.51 / 65.30 (mIoU / Boundary IoU), within 0.01 (its rounding).
    ~3.5 min on 2 cores; the data folder is LPOSS_SHARED_DATA (default ../shared/data)/camvid_segnet."""
    from benchmarks.refine import load_dataset, run, set_threads

    dataset = load_dataset("camvid", str(camvid_root), "val")
    threads = torch.get_num_threads()
    set_threads(1)
    try:
        result = run(dataset, refiner="reference", progress=False)
    finally:
        set_threads(threads)
    assert result["images"] == 101
    measured = [result[stage][metric] for stage in ("coarse", "refined") for metric in ("miou", "biou")]
    assert measured == pytest.approx([73.06, 63.25, 74.51, 65.30], abs=0.01)
