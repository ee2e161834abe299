"""Streaming evaluation of a dataset: decode -> backbones -> propagation -> metrics, without a feature store.

    lposs stream voc21|paxray:test_lungs [--data-dir data] [--device cuda] [--bf16] [--batch-images 4]
        [--workers 4] [--modes maskclip,own,lposs,lposs+] [--store DIR] [--json OUT.json] [--limit N]

The pipeline (stage -> features -> ablate) writes every image's features to disk first, which pays off
when many settings are swept, and costs ~145 GB for the paper's 8 benchmarks (`lposs paper --check` sizes it).
This evaluator runs the paper setting in one pass instead:
- DataLoader workers decode the images and read, check and reduce the labels while the GPU works;
- the windows of `batch_images` images go through each backbone as one batch (bf16 autocast lives in the
  backbones, `--bf16`), then every image is read back through `extraction.extract_shard`, the pipeline's
  own path, so the features are the ones the feature store would hold (they stay on the device unless
  a store is written);
- every setting runs through the evaluation loop the ablation uses (`evaluation.SettingsRun`), with no host wait
  anywhere in the loop (`benchmarks.launches` counts them; per-setting times come from CUDA events);
- confusion matrices and boundary counts accumulate on the device (`core.metrics.DeviceMetrics`) and
  become `SegmentationMetrics` at the end (one transfer);
- a progress bar shows images/s; with `store` the shards are also written (optional).
The metrics equal the ablation's over a feature store of the same backbones (tests/test_evaluate.py).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..core.metrics import SegmentationMetrics
from ..core.windows import crop_windows, resize_image, resized_size, window_layout
from ..io import file_md5, write_json
from ..models.factory import BackboneSpec, create_backbones, resolve_device
from ..models.protocols import own_head_params, own_step
from ..plugins import load_plugins
from ..settings import Setting, WindowSettings
from .ablation import sweep_points
from .commands import add_stream_arguments
from .evaluation import SettingsRun, SweepPoint, records
from .extraction import extract_shard, make_manifest
from .parameters import background_rule
from .staging import open_entry, prompts, split_entry
from .store import FeatureStore

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
        label = self.checker.prepare_label(sample.label)  # [H, W] int64
        image = torch.from_numpy(np.array(sample.image))  # [H, W, 3] uint8, a writable copy
        return {"index": i, "id": sample.id, "image": image,
                "label": torch.from_numpy(label), "class_names": self.class_names[i],
                "md5": file_md5(self.ds.items[i].image) if self.with_md5 else ""}


def as_float_image(image: Tensor) -> Tensor:
    """uint8 [H, W, 3] (on any device) -> float32 [3, H, W] in [0, 1], as `segment.as_image_tensor`."""
    return image.permute(2, 0, 1).float() / 255.0


def image_windows(image: Tensor, windows: WindowSettings) -> Tensor:
    """The backbone windows of one float image [3, H, W] -> [B, 3, crop, crop], as `extract_features` cuts them."""
    size = resized_size(*image.shape[1:], short_side=windows.short_side, long_side=windows.long_side)
    layout = window_layout(*size, crop=windows.crop, stride=windows.stride)
    return crop_windows(resize_image(image, size), layout, crop=windows.crop)


# --------------------------------------------------------------------------------------------------
# The backbones over the windows of several images at once
# --------------------------------------------------------------------------------------------------

class BatchedForward:
    """Stands in for a backbone: `run` does one forward over the windows of several images, then each
    `dense_features` call (one per image, from `extract_features`) hands back that image's share in order.
    Any other attribute is the backbone's own (text embeddings, ids, ...)."""

    def __init__(self, model: Any, vlm: "BatchedForward | None" = None):
        if getattr(model, "needs_text", False):  # ResCLIP: its forward reads one class list's query embeddings
            raise ValueError(f"head {model.head!r} reads the class list inside its forward, so its windows cannot "
                             "share a forward across images here: evaluate it through the feature store")
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
# The loop
# --------------------------------------------------------------------------------------------------

class StreamedShards:
    """Shards straight from the backbones: the windows of a batch of images through each backbone at once,
    then every image read back through `extract_shard` (the feature store's own path), the class texts
    encoded once per class list, each shard also saved when there is a store."""

    def __init__(self, vlm: Any, vm: Any, feature: str, windows: WindowSettings, device: str,
                 store: FeatureStore | None = None):
        self.vlm, self.feature, self.windows, self.device, self.store = vlm, feature, windows, device, store
        self.batched_vlm = BatchedForward(vlm)
        self.batched_vm = BatchedForward(vm, self.batched_vlm)
        self.texts: dict[tuple[str, ...], Any] = {}

    def __call__(self, batch: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Tensor, Tensor]]:
        """(shard, image [3, H, W], label [H, W]) of each item of a DataLoader batch, on the device."""
        images = [as_float_image(item["image"].to(self.device, non_blocking=True)) for item in batch]  # [3, H, W]
        cut = [image_windows(image, self.windows) for image in images]
        self.batched_vlm.run(cut)
        if "vlm" not in self.batched_vm.__dict__:
            self.batched_vm.run(cut)
        for item, image in zip(batch, images):
            key = tuple(item["class_names"])
            if key not in self.texts:
                self.texts[key] = self.vlm.text_embeddings(item["class_names"])
            shard = extract_shard(item["id"], image, item["class_names"], self.batched_vlm,
                                  {self.feature: self.batched_vm}, self.windows, item["md5"], text=self.texts[key],
                                  vm_dtype=self.store.manifest["vm_dtype"] if self.store else "float32",
                                  keep_on_device=self.store is None)  # no trip through the CPU unless saved
            if self.store is not None:
                self.store.save(shard)
            yield shard, image, item["label"].to(self.device, non_blocking=True)


def evaluate(ds: Any, vlm: Any, vm: Any, points: list[SweepPoint], device: str = "cpu",
             windows: WindowSettings | None = None, prompts: Any = None, background: dict[str, Any] | None = None,
             batch_images: int = 4, workers: int = 2, store: FeatureStore | None = None,
             progress: bool = True, own_step: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every point on every image of `ds` in one streaming pass -> {"records", "images", "seconds", ...}.

    points: as the ablation takes them (`ablation.sweep_points`; one graph feature for all, the one `vm`
    computes). prompts(i): the class prompts of image i (default the dataset's); background: the protocol
    rule (None = LPOSS's synonym max); own_step: the head's release's post-step, for mode "own"
    (`lposs.models.protocols.own_step`). store: also write every image's shard there. The records are those
    of the ablation (`evaluation.records`), computed by the same loop (`evaluation.SettingsRun`).
    """
    features = {point.setting.graph.vm_feature for point in points}
    if len(features) != 1:
        raise ValueError(f"one vision feature per streaming pass, the settings ask for {sorted(features)}: "
                         "evaluate them in separate runs, or fill a feature store (the pipeline) to sweep it")
    windows, prompts = windows or WindowSettings(), prompts or ds.class_names_for
    shards = StreamedShards(vlm, vm, features.pop(), windows, device, store)
    run = SettingsRun(ds, points, device, background, own_step)
    names = [list(prompts(i)) for i in range(len(ds))]
    loader = DataLoader(DecodedImages(ds, names, with_md5=store is not None), batch_size=batch_images,
                        num_workers=workers, collate_fn=list, pin_memory=str(device).startswith("cuda"))
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    bar = tqdm(total=len(ds), desc=f"evaluate {ds.name}", unit="img", disable=not progress)
    with torch.no_grad():
        for batch in loader:
            for shard, image, label in shards(batch):
                run.add(shard, image, label)
            bar.update(len(batch))
    seconds = run.seconds()  # on a GPU: waits for the last image
    bar.close()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if str(device).startswith("cuda") else None
    return {"dataset": ds.name, "split": ds.split, "images": len(ds), "seconds": elapsed,
            "images_per_second": len(ds) / elapsed, "peak_gpu_gib": peak, "batch_images": batch_images,
            "workers": workers, "windows": windows.as_dict(),
            "records": records(points, run.metrics(), seconds, len(ds))}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def open_protocol_entry(entry: str, data_dir: str, protocol: str = "lposs",
                        background: str = "protocol") -> tuple[Any, dict[str, Any], WindowSettings]:
    """A dataset entry as the pipeline's `datasets` list names it ('voc21' for its default split,
    'paxray:test_lungs' for a split) -> (dataset, background rule, windows) under `protocol`.

    The protocol's settings are those of the registry name: a split changes the images, not the release's
    settings. An unknown split raises `get_dataset`'s error: a MESS dataset names the splits it has, a listed
    dataset (voc21, demo, ...) the split list it did not find.
    """
    rule = background_rule(protocol, entry, background)
    windows = WindowSettings(**{key: rule[key] for key in WindowSettings.names()})
    return open_entry(entry, data_dir), rule, windows


def build_parser() -> argparse.ArgumentParser:
    """The options of `lposs stream` (lposs.experiment.commands declares them without importing torch)."""
    parser = argparse.ArgumentParser(prog="python -m lposs.experiment.streaming", description=__doc__.split("\n\n")[0])
    add_stream_arguments(parser)
    return parser


def spec_from_args(args: argparse.Namespace, rule: dict[str, Any]) -> BackboneSpec:
    """The backbones the options name ("protocol" = the release's head and CLIP weights; the release's head and
    text parameters on this dataset when the head is its own, as the pipeline's features stage does)."""
    if args.vlm == "demo":
        return BackboneSpec(vlm="demo", vlm_weights="none", head="demo", vm="demo", vm_weights="none",
                            vm_features=(args.vm_feature,))
    head = protocol_value(args.head, rule["head"])
    return BackboneSpec(vlm=args.vlm, vlm_weights=protocol_value(args.vlm_pretrained, rule["clip"]),
                        head=head, vm=args.vm, vm_weights=args.vm_pretrained, vm_features=(args.vm_feature,),
                        bf16=args.bf16, **own_head_params(rule, head))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """python -m lposs.experiment.streaming ARGS (lposs stream ARGS)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the dataset the options name, print the scores, write --json; returns the results."""
    load_plugins(args.plugin)  # a plugin's head (and protocol) before the options are resolved
    device = resolve_device(args.device, "--device", "--device cpu")
    ds, rule, windows = open_protocol_entry(args.dataset, args.data_dir, args.protocol, args.background)
    if args.limit:
        ds.items = ds.items[: args.limit]
    spec = spec_from_args(args, rule)
    backbones = create_backbones(spec, device)
    vm_feature = "clip" if args.vm == "clip" else args.vm_feature
    base = Setting.from_flat(vm_feature=vm_feature, refiner=args.refiner)
    points = sweep_points(base, "mode", args.modes.split(","), "lposs+")
    store = None
    if args.store:  # named by the entry, as the features stage names its stores
        manifest = make_manifest(args.dataset, prompts(ds, 0, args.protocol), backbones.vlm.id,
                                 {vm_feature: backbones.vm.id}, windows)
        store = FeatureStore(args.store, manifest)
    result = evaluate(ds, backbones.vlm, backbones.vm, points, device, windows,
                      lambda i: prompts(ds, i, args.protocol),
                      None if rule["background"] == "synonyms" else rule, args.batch_images, args.workers, store,
                      own_step=own_step(spec.head, split_entry(args.dataset)[0], sam=spec.mask_weights))
    result.update({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "bf16": args.bf16,
                   "protocol": args.protocol})
    for record in result["records"]:
        scores = record["metrics"]
        print(f"{record['label']:<16} mIoU {scores['miou']:.2f}  Boundary IoU {scores['biou']:.2f}")
    print(f"{result['dataset']} (split {result['split']}): {result['images']} images in {result['seconds']:.1f} s "
          f"({result['images_per_second']:.2f} img/s)")
    if args.json:
        write_json(args.json, result)
    return result


def protocol_value(given: str, protocol_value: str) -> str:
    """A command-line value, or the protocol's where it says "protocol"."""
    return protocol_value if given == "protocol" else given


if __name__ == "__main__":
    main()
