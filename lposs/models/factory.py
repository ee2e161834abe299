"""The one door to the backbones: a `BackboneSpec` names them, `create_backbones(spec, device)` builds them.

    spec = BackboneSpec(vlm="ViT-B-16", vlm_weights="laion2b_s34b_b88k", head="sclip", vm="dino_vitb16")
    backbones = create_backbones(spec, device="cuda")
    backbones.vlm                 # the dense CLIP seed model (lposs.models.backbones.DenseCLIP)
    backbones.graphs              # {feature: graph model}, one per stored graph feature (q / k / v / tokens)
    backbones.vm                  # the first of them: the graph of a single run

The spec covers every way the package gets backbones: the demo stand-ins (vlm, head and vm "demo"),
seeded random weights (vlm_weights / vm_weights "random"), pretrained tags from the Hugging Face cache
or the network, and local checkpoint files. The CLI, the web app, `segment`, the pipeline's notebooks and
the streaming evaluator all build a spec from their inputs and come through here. Weights that cannot
be had raise `BackboneUnavailable` within seconds, naming every missing file and the command that
fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from ..demo import DemoVLM, DemoVM
from ..plugins import load_plugins
from .backbones import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_PROXY_MODEL,
    VM_FEATURES,
    ClipGraphFeatures,
    DenseCLIP,
    VisionFeatures,
)
from .head_registry import head_record
from .loading import BackboneUnavailable, open_clip_quick_gelu, resolve_clip_weights, timm_name
from .masks import MASK_MODELS, create_mask_model
from .records import DEFAULT_HEAD, HeadRecord

DEFAULT_VM = "dino_vitb16"  # DINO ViT-B/16, LPOSS's graph (lposs.models.loading.VISION_MODELS)
VLM_WEIGHTS_SPECIAL = ("random", "none")  # seeded random weights | no weights (the demo stand-ins)
VM_WEIGHTS = ("pretrained", "random", "none")
DEMO_FEATURES = ("q", "k", "v")
RELEASE = "release"  # proxy / masks: the one the head's release reads (its record's `proxy` / `masks`)


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbones: the VLM and its dense head (the seeds), the graph model and its features.

    vlm: an open_clip model name, or "demo"; vlm_weights: an open_clip pretrained tag, "random" (seeded
    random weights) or "none" (demo). quick_gelu: None = as the tag's config says (QuickGELU for OpenAI's
    weights); True builds random weights shaped like OpenAI's. head: a name of `lposs.models.heads.HEADS`
    (or "demo"); head_params: overrides of its defaults, as (name, value) pairs; text_params: the parameters
    of the head's text step (CASS's, `lposs.models.heads_2025.cass_text.TEXT_PARAMS`), as pairs. masks: a
    class-agnostic mask model of `lposs.models.masks.MASK_MODELS` whose regions the graphs can respect ("none": no
    regions), or "release" (the default): the one the head's release reads (its record's `masks`: CorrCLIP's SAM 2),
    else "none". masks_checkpoint: the SAM weight file (None: the cached or
    downloaded one); a head that reads SAM's tensors (trident) reads SAM ViT-B from it too. With vlm_weights
    "random" every model is random: mask models and SAM included (`mask_weights`).
    vm: a `VISION_MODELS` short name, a timm name, "clip" (the VLM's own features, no second model) or
    "demo"; vm_weights: pretrained | random | none; vm_features: the graph features to compute (q, k, v of
    the last block or the final tokens; ("clip",) for vm "clip"). proxy: the vision model of a head that reads
    one: "release" (the default) = the one its release reads (its record's `proxy`: DINO ViT-B/8 for ProxyCLIP,
    CASS and CorrCLIP, DINO ViT-B/16 for Trident); ignored by the other heads.
    *_checkpoint: local weight files used instead of the tags (offline use). plugins: files (absolute paths) or
    modules that register heads (lposs.plugins), imported before the head is looked up, in every process that
    builds these backbones.
    """

    vlm: str = DEFAULT_CLIP_MODEL
    vlm_weights: str = DEFAULT_CLIP_PRETRAINED
    head: str = DEFAULT_HEAD
    vm: str = DEFAULT_VM
    vm_weights: str = "pretrained"
    vm_features: tuple[str, ...] = ("v",)
    proxy: str = RELEASE
    bf16: bool = False
    quick_gelu: bool | None = None
    head_params: tuple[tuple[str, Any], ...] = field(default=())
    text_params: tuple[tuple[str, Any], ...] = field(default=())
    masks: str = RELEASE
    masks_checkpoint: str | None = None
    clip_checkpoint: str | None = None
    vm_checkpoint: str | None = None
    proxy_checkpoint: str | None = None
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "plugins", tuple(self.plugins))
        load_plugins(self.plugins)  # a plugin's head must be registered before it is looked up (workers too)
        record = self.record  # an unknown head stops here, naming the choices
        if self.proxy == RELEASE:  # the proxy the head's release reads (DINO B/8; Trident's DINO B/16)
            object.__setattr__(self, "proxy", (record and record.proxy) or DEFAULT_PROXY_MODEL)
        if self.masks == RELEASE:  # the mask model the head's release reads (CorrCLIP: SAM 2); SAM's tensors, which
            # a head such as Trident reads itself, are not a mask model's regions
            object.__setattr__(self, "masks", (record and record.mask_model) or "none")
        object.__setattr__(self, "vm_features", tuple(self.vm_features))
        object.__setattr__(self, "head_params", tuple(sorted(dict(self.head_params).items())))
        object.__setattr__(self, "text_params", tuple(sorted(dict(self.text_params).items())))
        if self.vm == "clip":
            object.__setattr__(self, "vm_features", ("clip",))
        self._check()

    def _check(self) -> None:
        demo = (self.vlm == "demo", self.head == "demo", self.vm == "demo")
        if any(demo) and not all(demo):
            raise ValueError("the demo backbones go together: vlm demo, head demo, vm demo "
                             f"(got vlm {self.vlm!r}, head {self.head!r}, vm {self.vm!r})")
        if self.masks not in MASK_MODELS:
            raise ValueError(f"masks={self.masks!r}: use one of {', '.join(MASK_MODELS)} or {RELEASE}")
        if self.record is not None and "regions" in self.record.reads and self.masks == "none":
            release = f"its release uses {self.record.masks}, " if self.record.masks else ""
            raise ValueError(f"head {self.head!r} reads a mask model's regions: set masks (one of "
                             f"{', '.join(MASK_MODELS[1:])}; {release}the offline demo 'demo'; '{RELEASE}' = its "
                             "release's)")
        if self.record is not None:  # the head's parameters, before any weights load: a wrong name lists the head's
            self.record.settings({**self.record.caller_defaults, **dict(self.head_params)})
        if self.vm_weights not in VM_WEIGHTS:
            raise ValueError(f"vm_weights={self.vm_weights!r}: use one of {', '.join(VM_WEIGHTS)}")
        allowed = DEMO_FEATURES if self.is_demo else ("clip",) if self.vm == "clip" else VM_FEATURES
        features = self.vm_features
        if not features or len(set(features)) != len(features) or any(f not in allowed for f in features):
            raise ValueError(f"vm_features={','.join(features)!r}: give distinct names among {', '.join(allowed)} "
                             "separated by commas, e.g. 'v' or 'q,k,v'")

    @property
    def record(self) -> HeadRecord | None:
        """The head's record (None for the demo stand-ins); ValueError naming the choices for an unknown head."""
        return None if self.head == "demo" else head_record(self.head)

    @property
    def mask_weights(self) -> str | None:
        """The mask model's and SAM's weights (Trident's head and its refinement included): random with a random
        VLM, else masks_checkpoint (None: the cached or downloaded file)."""
        return "random" if self.vlm_weights == "random" else self.masks_checkpoint

    @property
    def is_demo(self) -> bool:
        return self.vlm == "demo"

    def key(self) -> str:
        """The feature store's folder name of these backbones, from the spec alone (no weights needed)."""
        import re

        weights = "none" if self.is_demo else self.vlm_weights
        parts = [self.vlm if weights in ("none", "") else f"{self.vlm}.{weights}",
                 f"{self.head}.{self.proxy}" if self.record is not None and "proxy" in self.record.reads else self.head,
                 self.vm if self.vm_weights in ("none", "pretrained", "") or self.vm == "clip"
                 else f"{self.vm}.{self.vm_weights}"]
        return re.sub(r"[^A-Za-z0-9._+-]", "-", "+".join(parts) + ("+bf16" if self.bf16 else ""))


def spec_from_clip_choice(clip_weights: str, random: bool = False, **fields: Any) -> BackboneSpec:
    """A spec from a `CLIP_WEIGHTS` name ("openclip-laion2b", "openai"), as the web page and the CLI name
    weights; random: seeded random weights shaped as those weights need (QuickGELU for OpenAI's)."""
    model, tag = resolve_clip_weights(clip_weights)
    return spec_from_clip_tag(model, tag, random, **fields)


def spec_from_clip_tag(model: str, tag: str, random: bool = False, **fields: Any) -> BackboneSpec:
    """A spec from an open_clip model name and pretrained tag; random: seeded random weights of that shape
    (and random graph weights unless `vm_weights` says otherwise)."""
    if not random:
        return BackboneSpec(vlm=model, vlm_weights=tag, **fields)
    fields.setdefault("vm_weights", "random")
    return BackboneSpec(vlm=model, vlm_weights="random", quick_gelu=open_clip_quick_gelu(model, tag), **fields)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str, name: str = "device", fix: str = "device 'cpu'") -> str:
    """auto -> cuda when torch sees a GPU, else cpu. cuda (or cuda:N) without a GPU is refused at once, before
    any weights load, naming `name` (how the caller spells the option) and `fix` (what to pass instead)."""
    import torch

    if device != "auto" and device.split(":")[0] not in DEVICES[1:]:
        raise ValueError(f"{name} {device!r}: choose one of {', '.join(DEVICES)} (cuda:N for the N-th GPU)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"{name} {device!r} was asked for but torch sees no GPU (torch {torch.__version__}, "
                         f"{build}): use {fix}")
    return device


class Backbones(NamedTuple):
    vlm: Any
    graphs: dict[str, Any]  # {feature: graph model}
    masks: Any = None  # the mask model (lposs.models.masks), None without one

    @property
    def vm(self) -> Any:
        """The graph model of the first feature (what a single segmentation uses)."""
        return next(iter(self.graphs.values()))


def create_backbones(spec: BackboneSpec, device: str = "cpu") -> Backbones:
    """Build the backbones a spec names, on `device`. Raises BackboneUnavailable naming every missing file."""
    missing: list[BackboneUnavailable] = []  # every unavailable weight file is named at once, not one per attempt

    def attempt(build: Callable[[], Any]) -> Any:
        try:
            return build()
        except BackboneUnavailable as error:
            missing.append(error)
            return None

    masks = attempt(lambda: create_mask_model(spec.masks, device, spec.mask_weights))
    if spec.is_demo:
        if missing:
            raise missing[0]
        return Backbones(DemoVLM(device=device), {f: DemoVM(f, device=device) for f in spec.vm_features}, masks)

    vm = None if spec.vm == "clip" else attempt(lambda: _vision_model(spec, spec.vm, spec.vm_features[0],
                                                                       spec.vm_checkpoint, device))
    record, proxy = spec.record, None
    if "proxy" in record.reads:
        feature = record.proxy_feature
        same = vm is not None and vm.model_name == timm_name(spec.proxy) and spec.proxy_checkpoint == spec.vm_checkpoint
        proxy = vm.with_feature(feature) if same else attempt(
            lambda: _vision_model(spec, spec.proxy, feature, spec.proxy_checkpoint, device))
    proxy_missing = "proxy" in record.reads and proxy is None  # its weights are missing: named below
    sam = attempt(lambda: _sam_attention(spec, device)) if record.reads_sam else None
    sam_missing = record.reads_sam and sam is None
    if record.trained is not None:  # the head's own trained weights (CLIP-DINOiser's): a missing file named here
        attempt(lambda: _trained_weights(spec))
    vlm = None if proxy_missing or sam_missing else attempt(lambda: _dense_clip(spec, proxy, device, sam))
    if missing:
        raise BackboneUnavailable("\n\n".join(map(str, missing)), [m for error in missing for m in error.missing])
    if vm is None:
        return Backbones(vlm, {"clip": ClipGraphFeatures(vlm)}, masks)
    return Backbones(vlm, {feature: vm.with_feature(feature) for feature in spec.vm_features}, masks)


def _vision_model(spec: BackboneSpec, name: str, feature: str, checkpoint: str | None, device: str) -> VisionFeatures:
    random = spec.vm_weights == "random"
    return VisionFeatures(name, pretrained=not random, feature=feature, device=device,
                          checkpoint=None if random else checkpoint, bf16=spec.bf16)


def _trained_weights(spec: BackboneSpec) -> Any:
    """The head's own trained weights (record.trained), as its head will read them: random with a random VLM, else
    the file its parameter names (None: the release's published one)."""
    record = spec.record
    params = dict(spec.head_params)
    if spec.vlm_weights in VLM_WEIGHTS_SPECIAL:
        params = record.random_trained(params)
    return record.trained.load(record.settings({**record.caller_defaults, **params})[record.trained.parameter])


def _sam_attention(spec: BackboneSpec, device: str) -> Any:
    """SAM ViT-B's last block for a head that reads it (trident): masks_checkpoint (or the cached weights);
    random weights with a random VLM."""
    from .sam_attention import SamAttention

    try:
        return SamAttention(spec.mask_weights, device)
    except ImportError as error:
        raise ImportError(f"head {spec.head!r} needs the segment-anything package: pip install -e .[masks] "
                          f"({error})") from error


def _dense_clip(spec: BackboneSpec, proxy: Any, device: str, sam: Any = None) -> DenseCLIP:
    random = spec.vlm_weights in VLM_WEIGHTS_SPECIAL
    pretrained = None if random else spec.vlm_weights
    quick = open_clip_quick_gelu(spec.vlm, pretrained, spec.quick_gelu)
    head_params = {**spec.record.batched, **dict(spec.head_params)}  # all windows of an image run as one batch
    return DenseCLIP(spec.vlm, pretrained=pretrained, device=device, bf16=spec.bf16,
                     checkpoint=None if random else spec.clip_checkpoint, head=spec.head,
                     head_params=head_params or None, proxy=proxy, quick_gelu=quick,
                     text_params=dict(spec.text_params) or None, sam=sam)
