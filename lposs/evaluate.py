"""Streaming evaluation of a dataset: decode -> backbones -> propagation -> metrics, without a feature store.

    python -m lposs.evaluate voc21|paxray:test_lungs [--data-dir data] [--device cuda] [--bf16] [--batch-images 4]
        [--workers 4] [--modes maskclip,lposs,lposs+] [--store DIR] [--json OUT.json] [--limit N]

The pipeline (stage -> features -> ablate) writes every image's features to disk first, which pays off
when many settings are swept, and costs ~100 GB for the paper's 8 benchmarks. This evaluator runs the
paper setting in one pass instead:
- DataLoader workers decode the images and read, check and reduce the labels while the GPU works;
- the windows of `batch_images` images go through each backbone as one batch (bf16 autocast lives in the
  backbones, `--bf16`), then every image is read back through `features.extract_shard`, the pipeline's
  own path, so the features are the ones the feature store would hold (they stay on the device unless
  a store is written);
- every setting of `settings` runs `segment.propagate_features` on the device, with no host wait
  anywhere in the loop (`benchmarks.launches` counts them; per-setting times come from CUDA events);
- confusion matrices and boundary counts accumulate on the device (`DeviceMetrics`) and become
  `metrics.SegmentationMetrics` at the end (one transfer);
- a progress bar shows images/s; with `store` the shards are also written (optional).
The metrics equal `pipeline.run_settings` over a feature store of the same backbones (tests/test_evaluate.py).
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .features import FeatureStore, extract_shard, file_md5, to_image_features
from .metrics import SegmentationMetrics, boundary_dilation
from .protocols import labels_from_scores
from .segment import propagate_features
from .windows import crop_windows, resize_image, resized_size, window_layout

WINDOWS = {"crop": 224, "stride": 112, "short_side": 448, "long_side": 2048}  # the paper's (spec section 1)


# --------------------------------------------------------------------------------------------------
# Reading: what the DataLoader workers do
# --------------------------------------------------------------------------------------------------

class DecodedImages(Dataset):
    """A lposs dataset as decoded items: image uint8 [H, W, 3] tensor, label in the evaluation encoding.

    The label is checked and reduced (`reduce_zero_label`) here, in the worker, by the metrics' own
    `prepare`; with_md5 adds the image file's md5 (needed only to write a feature store).
    """

    def __init__(self, ds: Any, class_names: list[list[str]], with_md5: bool = False):
        self.ds, self.class_names, self.with_md5 = ds, class_names, with_md5
        self.checker = SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label)

    def __len__(self) -> int:
        return len(self.class_names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.ds[i]
        _, label = self.checker.prepare(np.zeros_like(sample.label), sample.label)  # [H, W] int64
        image = torch.from_numpy(np.array(sample.image))  # [H, W, 3] uint8, a writable copy
        return {"index": i, "id": sample.id, "image": image,
                "label": torch.from_numpy(label), "class_names": self.class_names[i],
                "md5": file_md5(self.ds.items[i].image) if self.with_md5 else ""}


def as_float_image(image: Tensor) -> Tensor:
    """uint8 [H, W, 3] (on any device) -> float32 [3, H, W] in [0, 1], as `segment.as_image_tensor`."""
    return image.permute(2, 0, 1).float() / 255.0


def image_windows(image: Tensor, windows: dict[str, int]) -> Tensor:
    """The backbone windows of one float image [3, H, W] -> [B, 3, crop, crop], as `extract_features` cuts them."""
    size = resized_size(*image.shape[1:], short_side=windows["short_side"], long_side=windows["long_side"])
    layout = window_layout(*size, crop=windows["crop"], stride=windows["stride"])
    return crop_windows(resize_image(image, size), layout, crop=windows["crop"])


# --------------------------------------------------------------------------------------------------
# The backbones over the windows of several images at once
# --------------------------------------------------------------------------------------------------

class BatchedForward:
    """Stands in for a backbone: `run` does one forward over the windows of several images, then each
    `dense_features` call (one per image, from `extract_features`) hands back that image's share in order.
    Any other attribute is the backbone's own (text embeddings, ids, ...)."""

    def __init__(self, model: Any, vlm: "BatchedForward | None" = None):
        self.model, self.pending = model, []
        if vlm is not None and getattr(model, "vlm", None) is vlm.model:
            self.vlm = vlm  # a graph model made of the VLM's own features: extract_features reuses its forward

    def run(self, batches: list[Tensor]) -> None:
        out = self.model.dense_features(torch.cat(batches))  # [sum B_i, g, g, D]
        self.pending = list(out.split([b.shape[0] for b in batches]))

    def dense_features(self, windows: Tensor) -> Tensor:
        if not self.pending or self.pending[0].shape[0] != windows.shape[0]:
            raise RuntimeError("BatchedForward asked for windows it did not run: call run() with every image's "
                               "windows, in the order the images are read back")
        return self.pending.pop(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)


# --------------------------------------------------------------------------------------------------
# Metrics on the device
# --------------------------------------------------------------------------------------------------

class DeviceMetrics:
    """`SegmentationMetrics`' confusion matrix and boundary counts, accumulated on the device.

    update(pred, label): [H, W] int64 tensors on one device, label already prepared (reduced, checked) and
    pred in 0..K-1. No host synchronisation; `to_metrics()` copies the counts back once.
    """

    def __init__(self, like: SegmentationMetrics, device: str | torch.device):
        self.like, self.n, self.ignore = like, like.num_classes, like.ignore_index
        self.confusion = torch.zeros(self.n * self.n + 1, dtype=torch.int64, device=device)  # last: ignored
        self.intersection = torch.zeros(self.n + 1, dtype=torch.int64, device=device)
        self.union = torch.zeros(self.n + 1, dtype=torch.int64, device=device)
        self.images = 0

    def update(self, pred: Tensor, label: Tensor) -> None:
        valid = label != self.ignore
        pred = torch.where(valid, pred, self.ignore)
        self._count(self.confusion, label * self.n + pred, valid, self.n * self.n)
        d = boundary_dilation(*label.shape, ratio=self.like.dilation_ratio)
        label_edge = ~interior(label, d) & valid
        pred_edge = ~interior(pred, d) & (pred != self.ignore)
        both = label_edge & pred_edge & (label == pred)
        self._count(self.intersection, label, both, self.n)
        self._count(self.union, label, label_edge, self.n)
        self._count(self.union, pred, pred_edge, self.n)
        self._count(self.union, label, both, self.n, sign=-1)
        self.images += 1

    @staticmethod
    def _count(counts: Tensor, index: Tensor, where: Tensor, dump: int, sign: int = 1) -> None:
        """counts[index[where]] += sign, as a scatter (boolean indexing would wait for the device)."""
        index = torch.where(where, index, dump).reshape(-1)
        counts.scatter_add_(0, index, torch.full_like(index, sign))

    def to_metrics(self) -> SegmentationMetrics:
        out = SegmentationMetrics(self.n, self.ignore, self.like.reduce_zero_label, self.like.dilation_ratio)
        out.confusion = self.confusion[:-1].reshape(self.n, self.n).cpu().numpy()
        out.boundary_intersection = self.intersection[:-1].cpu().numpy()
        out.boundary_union = self.union[:-1].cpu().numpy()
        out.images = self.images
        return out


def interior(label_map: Tensor, dilation: int) -> Tensor:
    """`metrics.interior_mask` on the device: pixels whose (2d+1)-window lies in the image, one label only.

    A window holds one label iff its maximum equals its minimum once the map is padded with -1 (a value
    no label takes); max and min over a square are separable (rows, then columns).
    """
    k = 2 * dilation + 1
    padded = F.pad(label_map[None, None].float(), (dilation,) * 4, value=-1.0)  # [1, 1, H+2d, W+2d]
    high = F.max_pool2d(F.max_pool2d(padded, (1, k), stride=1), (k, 1), stride=1)
    low = -F.max_pool2d(F.max_pool2d(-padded, (1, k), stride=1), (k, 1), stride=1)
    return (high == low)[0, 0]  # [H, W]


class SettingClock:
    """Seconds spent per setting. On the CPU the wall clock; on a GPU, where the host only queues the work
    and a clock read would measure the queueing, CUDA events recorded around each setting and read once
    at the end (`seconds()`), so timing adds no wait inside the loop."""

    def __init__(self, device: str | torch.device):
        self.cuda = str(device).startswith("cuda")
        self.spans: dict[str, list[Any]] = {}

    @contextmanager
    def timing(self, label: str) -> Iterator[None]:
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self.spans.setdefault(label, []).append((begin, end))
        else:
            tick = time.perf_counter()
            yield
            self.spans.setdefault(label, []).append(time.perf_counter() - tick)

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {label: sum(b.elapsed_time(e) for b, e in spans) / 1e3 for label, spans in self.spans.items()}
        return {label: float(sum(spans)) for label, spans in self.spans.items()}


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

def evaluate(ds: Any, vlm: Any, vm: Any, settings: list[dict[str, Any]], device: str = "cpu",
             windows: dict[str, int] | None = None, prompts: Any = None, background: dict[str, Any] | None = None,
             batch_images: int = 4, workers: int = 2, store: FeatureStore | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Every setting on every image of `ds` in one streaming pass -> {"records", "images", "seconds", ...}.

    settings: as `pipeline.run_settings` takes them (label, mode, vm_feature and the propagation
    parameters; one vm_feature for all, the one `vm` computes). prompts(i): the class prompts of image i
    (default the dataset's); background: the protocol rule (None = LPOSS's synonym max). store: also
    write every image's shard there. Records are those of `run_settings`.
    """
    from .pipeline import propagation_kwargs, result_record

    features = {s["vm_feature"] for s in settings}
    if len(features) != 1:
        raise ValueError(f"one vision feature per streaming pass, the settings ask for {sorted(features)}: "
                         "evaluate them in separate runs, or fill a feature store (the pipeline) to sweep it")
    feature, windows = features.pop(), windows or WINDOWS
    prompts = prompts or ds.class_names_for
    names = [list(prompts(i)) for i in range(len(ds))]
    texts: dict[tuple[str, ...], Any] = {}
    like = SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label)
    metrics = {s["label"]: DeviceMetrics(like, device) for s in settings}
    clock = SettingClock(device)
    batched_vlm = BatchedForward(vlm)
    batched_vm = BatchedForward(vm, batched_vlm)
    loader = DataLoader(DecodedImages(ds, names, with_md5=store is not None), batch_size=batch_images,
                        num_workers=workers, collate_fn=list, pin_memory=str(device).startswith("cuda"))
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    bar = tqdm(total=len(ds), desc=f"evaluate {ds.name}", unit="img", disable=not progress)
    with torch.no_grad():
        for batch in loader:
            images = [as_float_image(item["image"].to(device, non_blocking=True)) for item in batch]  # [3, H, W]
            cut = [image_windows(image, windows) for image in images]
            batched_vlm.run(cut)
            if "vlm" not in batched_vm.__dict__:
                batched_vm.run(cut)
            for item, image in zip(batch, images):
                key = tuple(item["class_names"])
                if key not in texts:
                    texts[key] = vlm.text_embeddings(item["class_names"])
                shard = extract_shard(item["id"], image, item["class_names"], batched_vlm, {feature: batched_vm},
                                      windows, item["md5"], text=texts[key],
                                      vm_dtype=store.manifest["vm_dtype"] if store else "float32",
                                      keep_on_device=store is None)  # no trip through the CPU unless saved
                if store is not None:
                    store.save(shard)
                label = item["label"].to(device, non_blocking=True)
                for setting in settings:
                    with clock.timing(setting["label"]):
                        feats = to_image_features(shard, feature, image if setting["mode"] == "lposs+" else None)
                        scores = propagate_features(feats, device=device, background=background,
                                                    **propagation_kwargs(setting))
                        metrics[setting["label"]].update(labels_from_scores(scores, background or {}), label)
            bar.update(len(batch))
    seconds = clock.seconds()  # on a GPU: waits for the last image
    bar.close()
    elapsed = time.perf_counter() - start
    records = [result_record(s, metrics[s["label"]].to_metrics(), seconds.get(s["label"], 0.0), len(ds))
               for s in settings]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if str(device).startswith("cuda") else None
    return {"dataset": ds.name, "split": ds.split, "images": len(ds), "seconds": elapsed,
            "images_per_second": len(ds) / elapsed, "peak_gpu_gib": peak, "batch_images": batch_images,
            "workers": workers, "windows": windows, "records": records}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def open_entry(entry: str, data_dir: str, protocol: str = "lposs",
               background: str = "protocol") -> tuple[Any, dict[str, Any], dict[str, int]]:
    """A dataset entry as the pipeline's `datasets` list names it ('voc21' for its default split,
    'paxray:test_lungs' for a split) -> (dataset, background rule, windows) under `protocol`.

    The protocol's settings are those of the registry name: a split changes the images, not the release's
    settings. An unknown split raises `get_dataset`'s error: a MESS dataset names the splits it has, a listed
    dataset (voc21, demo, ...) the split list it did not find.
    """
    from . import pipeline as pl
    from .datasets import get_dataset

    name, split = pl.split_entry(entry)
    rule = pl.background_rule(protocol, name, background)
    windows = pl.protocol_windows(protocol, name, **{k: "protocol" for k in WINDOWS})
    return get_dataset(name, pl.dataset_root(entry, data_dir), split), rule, windows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from . import pipeline as pl
    from .features import make_manifest

    parser = argparse.ArgumentParser(prog="python -m lposs.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a dataset name (voc21, ..., demo), or name:split (paxray:test_bones)")
    parser.add_argument("--data-dir", default="data", help="dataset roots: DATA_DIR/<folder> (default: data)")
    parser.add_argument("--protocol", default="lposs", help="prompts, windows and background rule of a release")
    parser.add_argument("--background", default="protocol", help="protocol | synonyms | softmax")
    parser.add_argument("--vlm", default="ViT-B-16", help="open_clip model name, or demo")
    parser.add_argument("--vlm-pretrained", default="protocol", help="weights tag; protocol = the release's")
    parser.add_argument("--head", default="protocol", help="dense CLIP head; protocol = the release's")
    parser.add_argument("--vm", default="dino_vitb16", help="graph model (lposs.backbones), clip, or demo")
    parser.add_argument("--vm-pretrained", default="pretrained", help="pretrained | random")
    parser.add_argument("--vm-feature", default="v", help="q | k | v | tokens")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast in the backbones (CUDA)")
    parser.add_argument("--modes", default="maskclip,lposs,lposs+", help="comma-separated, evaluated together")
    parser.add_argument("--refiner", default="reference", help="LPOSS+ pixel refiner (lposs.refine.REFINERS)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-images", type=int, default=4, help="images whose windows share a forward")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding images")
    parser.add_argument("--store", help="also write the feature shards to this folder (optional)")
    parser.add_argument("--limit", type=int, help="only the first N images (a quick check)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    device = pl.resolve_device(args.device)
    ds, rule, windows = open_entry(args.dataset, args.data_dir, args.protocol, args.background)
    if args.limit:
        ds.items = ds.items[: args.limit]
    demo = args.vlm == "demo"
    vlm, vms = pl.build_backbones(args.vlm, "none" if demo else pl_value(args.vlm_pretrained, rule["clip"]),
                                  "demo" if demo else pl_value(args.head, rule["head"]), "demo" if demo else args.vm,
                                  "none" if demo else args.vm_pretrained, [args.vm_feature], device, args.bf16)
    vm = next(iter(vms.values()))
    base = {"k": 400, "gamma": 3.0, "sigma": 0.01, "p": 1.0, "vm_feature": args.vm_feature, "alpha": 0.95,
            "maxiter": 10, "tol": 1e-6, "solver": "cg", "r": 13, "tau": 0.01, "refiner": args.refiner}
    settings = pl.sweep_settings(base, "mode", args.modes.split(","), "lposs+")
    store = None
    if args.store:  # named by the entry, as the features stage names its stores
        manifest = make_manifest(args.dataset, pl.prompts(ds, 0, args.protocol), vlm.id, {args.vm_feature: vm.id},
                                 windows)
        store = FeatureStore(args.store, manifest)
    result = evaluate(ds, vlm, vm, settings, device, windows, lambda i: pl.prompts(ds, i, args.protocol),
                      None if rule["background"] == "synonyms" else rule, args.batch_images, args.workers, store)
    result.update({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "bf16": args.bf16,
                   "protocol": args.protocol})
    for record in result["records"]:
        scores = record["metrics"]
        print(f"{record['label']:<16} mIoU {scores['miou']:.2f}  Boundary IoU {scores['biou']:.2f}")
    print(f"{result['dataset']} (split {result['split']}): {result['images']} images in {result['seconds']:.1f} s "
          f"({result['images_per_second']:.2f} img/s)")
    if args.json:
        pl.write_json(args.json, result)
    return result


def pl_value(given: str, protocol_value: str) -> str:
    """A command-line value, or the protocol's where it says "protocol"."""
    return protocol_value if given == "protocol" else given


if __name__ == "__main__":
    main()
