"""params.yaml, read and validated once, and the parameters of the pipeline's notebooks.

Every stage notebook takes the path of params.yaml and the item of its DVC matrix (dataset, head, vm,
sweep) as papermill parameters, and builds everything else from `PipelineParams.load(params_file)`:
the backbone spec (`lposs.models.factory.BackboneSpec`), the windows (`lposs.settings.WindowSettings`,
a protocol's values where params.yaml says `protocol`), the protocol's background rule and the base
propagation `Setting`. So a setting is declared in params.yaml (its value) and in `lposs.settings` (its
type, default and check), nowhere else; dvc.yaml lists the params each stage reads, so DVC re-runs what
they change. An unknown or mistyped key in params.yaml, in a notebook's parameters or in `overrides` stops
with a message naming it and the valid keys (papermill itself only warns).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..core.scoring import BACKGROUND_RULES
from ..models.factory import RELEASE, BackboneSpec
from ..models.factory import resolve_device as factory_resolve_device
from ..models.masks import MASK_MODELS
from ..models.protocols import PROTOCOLS, WINDOW_KEYS, own_head_params, own_step, resolve
from ..plugins import is_path, load_plugins, plugin_file
from ..settings import SECTIONS, Setting, WindowSettings, refuse_unknown
from .staging import split_entry
from .store import VM_DTYPES

DEVICES = ("auto", "cpu", "cuda")
PROTOCOL_VALUE = "protocol"  # a windows / vlm_pretrained / background value: the protocol's own


class WindowSize:
    """Type of a window value: a positive int, or "protocol" (the protocol's value on each dataset)."""


# params.yaml, section by section (graph, lp and pixel are the fields of lposs.settings)
SCHEMA: dict[str, Any] = {
    "plugins": list,
    "datasets": list,
    "data": {"dir": str},
    "backbone": {"vlm": str, "vlm_pretrained": str, "heads": list, "vms": list, "vm_pretrained": str,
                 "proxy": str, "masks": str, "vm_features": str, "vm_dtype": str, "bf16": bool, "device": str},
    "protocol": {"name": str, "background": str},
    "windows": {key: WindowSize for key in WINDOW_KEYS},
    **{name: "settings" for name in SECTIONS},
    "ablate": {"predictions": int, "sweeps": list},
}
CHOICES = {"backbone.masks": MASK_MODELS + (RELEASE,), "backbone.vm_dtype": tuple(VM_DTYPES),
           "backbone.device": DEVICES,
           "protocol.name": PROTOCOLS,  # live: a plugin's protocol counts once the plugin is loaded
           "protocol.background": (PROTOCOL_VALUE,) + BACKGROUND_RULES}
SWEEP_KEYS = ("param", "values", "mode")

# The notebooks' parameters cells, by name and type (tests/test_notebooks_clean.py keeps the two in step)
_DIRS = {"staged_dir": str, "timings_dir": str}
STAGE_PARAMETERS: dict[str, dict[str, type]] = {
    "stage": {"params_file": str, "dataset": str, "out_dir": str, "timings_dir": str},
    "features": {"params_file": str, "dataset": str, "head": str, "vm": str, "overrides": dict,
                 "out_dir": str, **_DIRS},
    "ablate": {"params_file": str, "dataset": str, "head": str, "vm": str, "sweep_param": str, "sweep_values": list,
               "sweep_mode": str, "overrides": dict, "features_dir": str, "out_dir": str, **_DIRS},
    "plots": {"params_file": str, "staged_dir": str, "ablations_dir": str, "timings_dir": str, "plots_dir": str,
              "results_dir": str},
}


# --------------------------------------------------------------------------------------------------
# The notebooks' parameters
# --------------------------------------------------------------------------------------------------

def injected_parameters(namespace: dict[str, Any], before: set[str]) -> dict[str, Any]:
    """The names a notebook's parameters cell (and papermill's injected cell) defined after `before`."""
    return {k: v for k, v in namespace.items() if k not in before and not k.startswith("_")}


def check_parameters(stage: str, values: dict[str, Any]) -> None:
    """Raise ValueError for unknown names (typos papermill would only warn about), missing ones, wrong types."""
    spec = STAGE_PARAMETERS[stage]
    refuse_unknown(values, tuple(spec), f"the parameters of notebooks/{stage}.ipynb (check the -p/-r/-y names "
                                        "in dvc.yaml or on your papermill command line)")
    missing = sorted(set(spec) - set(values))
    if missing:
        raise ValueError(f"notebooks/{stage}.ipynb lacks parameter(s) {missing}")
    for name, kind in spec.items():
        check_type(f"parameter {name}", values[name], kind)


def check_type(name: str, value: Any, kind: Any) -> None:
    """ValueError naming `name` when value is not of `kind` (int, float, str, bool, list, dict, WindowSize)."""
    if kind is WindowSize:
        if value != PROTOCOL_VALUE and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name}={value!r} should be a positive int or 'protocol' (the protocol's value)")
        return
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"{name}={value!r} should be {kind.__name__}")


def resolve_device(device: str) -> str:
    """backbone.device of params.yaml: auto -> cuda when torch sees a GPU, else cpu; cuda without a GPU is
    refused with the fix (`lposs.models.factory.resolve_device`)."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r}: choose one of {', '.join(DEVICES)}")
    return factory_resolve_device(device, "backbone.device", "backbone.device: auto or cpu in params.yaml "
                                  "(or dvc exp run -S backbone.device=cpu)")


# --------------------------------------------------------------------------------------------------
# params.yaml
# --------------------------------------------------------------------------------------------------

def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """base with overrides merged in, section by section (a nested dict replaces only the keys it names)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else copy.deepcopy(value)
    return out


def check_plugins(plugins: Any, where: str) -> None:
    if not isinstance(plugins, list) or not all(isinstance(plugin, str) and plugin for plugin in plugins):
        raise ValueError(f"{where}: `plugins` lists files (paths relative to params.yaml's folder) or module names, "
                         f"got {plugins!r}")


def check_params(params: Mapping[str, Any], where: str) -> None:
    """Every section and key of params.yaml known and of the right type (settings sections: lposs.settings)."""
    refuse_unknown(params, tuple(SCHEMA), where)
    missing = [section for section in SCHEMA if section not in params]
    if missing:
        raise ValueError(f"{where} lacks section(s) {missing}")
    for section, spec in SCHEMA.items():
        value = params[section]
        if spec == "settings":
            SECTIONS[section].from_mapping(value or {})
        elif isinstance(spec, dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}: `{section}` should be a mapping of {', '.join(spec)}")
            refuse_unknown(value, tuple(spec), f"{where} `{section}`")
            for key, kind in spec.items():
                if key not in value:
                    raise ValueError(f"{where} `{section}` lacks `{key}`")
                check_type(f"{section}.{key}", value[key], kind)
                if f"{section}.{key}" in CHOICES and value[key] not in CHOICES[f"{section}.{key}"]:
                    raise ValueError(f"{section}.{key}={value[key]!r}: choose one of "
                                     f"{', '.join(CHOICES[f'{section}.{key}'])}")
        else:
            check_type(section, value, spec)
    check_plugins(params["plugins"], where)
    for sweep in params["ablate"]["sweeps"]:
        if not isinstance(sweep, Mapping):
            raise ValueError(f"{where}: every ablate.sweeps entry is {{param, values, mode}}, got {sweep!r}")
        refuse_unknown(sweep, SWEEP_KEYS, f"{where} ablate.sweeps")


@dataclass(frozen=True)
class PipelineParams:
    """params.yaml, validated; what each stage needs is derived from it by the methods below."""

    raw: dict[str, Any]
    root: str = "."  # the folder of params.yaml: plugin paths are relative to it

    @classmethod
    def load(cls, params_file: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None
             ) -> "PipelineParams":
        """Read, merge `overrides` (same layout, e.g. {"lp": {"alpha": 0.9}}), validate."""
        path = Path(params_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the notebooks from the repository root "
                                    "or pass params_file")
        raw = yaml.safe_load(path.read_text()) or {}
        refuse_unknown(overrides or {}, tuple(SCHEMA), "overrides")
        raw = {"plugins": [], **merged(raw, overrides or {})}  # a params.yaml without plugins: none
        where = str(path) + (" with overrides" if overrides else "")
        check_plugins(raw["plugins"], where)
        load_plugins(raw["plugins"], root=path.resolve().parent)  # first: their heads and protocols are choices
        check_params(raw, where)
        return cls(raw, str(path.resolve().parent))

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.raw[name])

    @property
    def datasets(self) -> list[str]:
        return list(self.raw["datasets"])

    @property
    def plugins(self) -> tuple[str, ...]:
        """params.yaml's `plugins`: files as absolute paths (relative ones are read from params.yaml's folder),
        module names as they are."""
        return tuple(str(plugin_file(spec, self.root)) if is_path(spec) else spec for spec in self.raw["plugins"])

    @property
    def combos(self) -> list[tuple[str, str]]:
        """(head, vm) of every backbone combination: the DVC matrix of features and ablate."""
        backbone = self.raw["backbone"]
        return [(head, vm) for head in backbone["heads"] for vm in backbone["vms"]]

    @property
    def protocol(self) -> str:
        return self.raw["protocol"]["name"]

    def clip_weights(self) -> str:
        """The CLIP weights tag: "protocol" -> the weights the protocol's release published with."""
        backbone = self.raw["backbone"]
        if backbone["vlm"] == "demo":
            return "none"
        pretrained = backbone["vlm_pretrained"]
        return PROTOCOLS[self.protocol]["base"]["clip"] if pretrained == PROTOCOL_VALUE else pretrained

    def backbone_spec(self, head: str, vm: str, entry: str | None = None) -> BackboneSpec:
        """The backbones of combination head + vm (the graph features params.yaml stores). On a dataset entry,
        a head that is the protocol's own gets the release's parameters there (ResCLIP's temp_thd, PEARL's
        alpha_kk, ...: the protocol's head_params; CASS's text step: its text_params); they are part of the
        VLM's id, so of the store's manifest."""
        backbone = self.raw["backbone"]
        features = tuple(name.strip() for name in backbone["vm_features"].split(",") if name.strip())
        return BackboneSpec(vlm=backbone["vlm"], vlm_weights=self.clip_weights(), head=head, vm=vm,
                            vm_weights="none" if vm == "demo" else backbone["vm_pretrained"],
                            vm_features=features, proxy=backbone["proxy"], bf16=backbone["bf16"],
                            masks=backbone["masks"], plugins=self.plugins,
                            **({} if entry is None else own_head_params(resolve(self.protocol, split_entry(entry)[0]),
                                                                        head)))

    def built_on(self, head: str) -> dict[str, Any]:
        """What a combination's numbers come from besides its graph: the CLIP model and weights, the head's
        second vision model and mask model (its record's: Trident's SAM, CorrCLIP's regions), what was trained
        ("training-free" or not); written beside the results, read by the results table."""
        backbone = self.raw["backbone"]
        clip = "none" if backbone["vlm"] == "demo" else f"{backbone['vlm']} {self.clip_weights()}"
        if head == "demo":
            return {"clip": clip, "proxy": None, "masks": None}
        spec = self.backbone_spec(head, "clip" if backbone["vlm"] != "demo" else "demo")
        record = spec.record
        # the mask model whose output the head or its own step reads: SAM's tensors (Trident), or the masks the
        # features stage stores (CorrCLIP's regions, LaVG's vote on Panoptic Cut's masks)
        reads_masks = "regions" in record.reads or record.masks is not None
        masks = record.masks if record.reads_sam else spec.masks if reads_masks else None
        return {"clip": clip, "proxy": spec.proxy if "proxy" in record.reads else None, "masks": masks,
                "training": record.training}

    def own_step(self, head: str, entry: str) -> dict[str, Any] | None:
        """The post-step of `head`'s release on a dataset entry (mode "own"; `lposs.models.protocols.own_step`)."""
        return own_step(head, split_entry(entry)[0], sam="random" if self.clip_weights() == "random" else None)

    def windows(self, entry: str) -> WindowSettings:
        """The windows on a dataset entry: params.yaml's ints, the protocol's values where it says "protocol"."""
        settings = resolve(self.protocol, split_entry(entry)[0])
        given = self.raw["windows"]
        return WindowSettings(**{key: settings[key] if given[key] == PROTOCOL_VALUE else int(given[key])
                                 for key in WINDOW_KEYS})

    def rule(self, entry: str) -> dict[str, Any]:
        """The protocol's settings on a dataset entry as they are in force: the background rule switched when
        params.yaml says so, the windows as run (params.yaml's values where it gives ints)."""
        rule = background_rule(self.protocol, entry, self.raw["protocol"]["background"])
        return {**rule, **self.windows(entry).as_dict()}

    def base_setting(self, vm: str, mode: str = "lposs+") -> Setting:
        """graph, lp and pixel of params.yaml as a Setting; the `clip` graph has the one feature `clip`."""
        sections = {name: self.section(name) for name in SECTIONS}
        if vm == "clip":
            sections["graph"]["vm_feature"] = "clip"
        return Setting.from_sections(mode, sections)


def background_rule(protocol: str, entry: str, background: str = PROTOCOL_VALUE) -> dict[str, Any]:
    """A protocol's settings on a dataset entry (a name or `name:split`: the release's settings are those
    of the name), with the background rule switched unless `background` is "protocol"."""
    return resolve(protocol, split_entry(entry)[0], background=None if background == PROTOCOL_VALUE else background)
