"""The talk's demo as a local web app (Gradio): segment any photo with any class names.

    python -m lposs demo                      # real weights (downloaded on first use), http://127.0.0.1:7860
    python -m lposs demo --demo-backbones     # the embedded stand-ins and generated scenes, no download
    python -m lposs demo --random-weights     # untrained backbones, no download (smoke test)

The page shows MaskCLIP (or the chosen head's seeds), LPOSS and LPOSS+ side by side as overlays with a
legend, the time of each stage and the label maps to download. The app never leaves this machine: it
listens on 127.0.0.1, share links and Gradio's analytics are off, and the page loads no remote assets.
What a click does lives in `lposs.app.webapp_backend`; this module is the page and the command line.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .webapp_backend import MAX_SIDE, DemoConfig, SegmentService, example_rows
from .webapp_models import (
    PROTOCOL_DATASET_TITLE,
    ModelChoice,
    clip_weight_choices,
    describe_rule,
    head_choices,
    protocol_choices,
    protocol_rule,
    refiner_choices,
    vision_model_choices,
)

DEFAULT_HOST = "127.0.0.1"
MODES_SHOWN = ("maskclip", "lposs", "lposs+")
INTRO = """# LPOSS / LPOSS+: segment any photo with any class names
Training-free open-vocabulary segmentation (Stojnić, Kalantidis, Matas, Tolias, CVPR 2025). Upload a photo or pick an
example, type class names (`;` between classes, `,` between synonyms of one class) and press **Segment**: the
dense CLIP head's seeds, LPOSS (label propagation over patches) and LPOSS+ (then over pixels) appear side by side."""
PROTOCOL_INFO = (f"How scores become labels. lposs: max over synonyms, argmax. The others: their release's softmax "
                 f"rule with its {PROTOCOL_DATASET_TITLE} values; pixels below prob_thd stay unlabelled")


def import_gradio() -> Any:
    """gradio with its analytics and version check off (set before the import reads them)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise RuntimeError("the web app needs gradio: pip install 'lposs[demo]' (or: make install)") from None
    return gradio


def build_app(service: SegmentService) -> Any:
    """The page: inputs and choices on top, three overlays, the stage times and the downloads below."""
    gr = import_gradio()
    config = service.config
    clip_weights = clip_weight_choices(config.weights, config.clip_weights)
    heads, vision_models = head_choices(config.weights), vision_model_choices(config.weights)
    refiners = refiner_choices()
    examples, examples_label = example_rows(config, service.out_root)
    with gr.Blocks(title="LPOSS demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO)
        gr.Markdown(config.notice, elem_id="weights-notice")
        with gr.Row():
            image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Photo",
                             elem_id="input-image", height=300)
            with gr.Column():
                classes = gr.Textbox(label="Class names", placeholder="cow; grass, lawn; sky", elem_id="classes",
                                     info="`;` between classes, `,` between synonyms of one class")
                with gr.Row():
                    weights = dropdown(gr, clip_weights, "CLIP weights", "clip-weights")
                    head = dropdown(gr, heads, "Dense CLIP head (seeds)", "head")
                with gr.Row():
                    vision = dropdown(gr, vision_models, "Vision model (patch graph)", "vision-model")
                    refiner = dropdown(gr, refiners, "LPOSS+ pixel refiner", "refiner")
                protocol = dropdown(gr, protocol_choices(), "Scoring protocol", "protocol", PROTOCOL_INFO)
                with gr.Accordion("Scoring protocols: what each does", open=False):
                    gr.Markdown(protocols_help(), elem_id="protocols-help")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                gr.Examples(examples=examples, inputs=[image, classes], label=examples_label)
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            overlays = [gr.Image(label=title, type="filepath", format="png", interactive=False, height=360,
                                 elem_id=f"overlay-{mode.replace('+', '-plus')}")
                        for mode, title in zip(MODES_SHOWN, ("MaskCLIP", "LPOSS", "LPOSS+"))]
        timings = gr.Markdown(elem_id="timings")
        files = gr.File(label="Label maps (PNG, pixel value = class index; classes.txt names them, settings.json "
                              "records the choices and scoring protocol)",
                        file_count="multiple", interactive=False, elem_id="label-maps")

        def segment_click(upload, text, weights_name, head_name, vision_name, refiner_name, protocol_name,
                          progress=gr.Progress(track_tqdm=True)):
            # Unpreprocessed (preprocess=False below): Gradio's image preprocessing opens the upload with PIL before
            # any handler runs and answers a text file named .png or a 30000 x 30000 PNG with a bare "Error". The
            # upload's file goes unopened to read_upload, which names it and says what to do; the other inputs
            # go through their components' own preprocessing (the dropdowns check their choices).
            values = (text, weights_name, head_name, vision_name, refiner_name, protocol_name)
            text, weights_name, head_name, vision_name, refiner_name, protocol_name = (
                component.preprocess(value) for component, value in zip(inputs[1:], values))
            page = service.run(uploaded_path(upload), text, ModelChoice(weights_name, head_name, vision_name),
                               refiner_name, progress, protocol=protocol_name)
            shown = [gr.Image(value=path, label=title) for path, title in zip(page.overlays, page.titles)]
            shown += [gr.Image(value=None)] * (len(overlays) - len(shown))
            return [page.status, *shown, page.timings, page.files or None]

        inputs = [image, classes, weights, head, vision, refiner, protocol]
        outputs = [status, *overlays, timings, files]
        for trigger in (button.click, classes.submit):  # one segmentation at a time, whichever started it
            trigger(segment_click, inputs=inputs, outputs=outputs, concurrency_limit=1, concurrency_id="segment",
                    preprocess=False)
    return app


def uploaded_path(upload: dict[str, Any] | None) -> str | None:
    """The file an unpreprocessed gr.Image value names (Gradio has checked it is one of its uploads), or None."""
    return (upload or {}).get("path")


def dropdown(gr: Any, choices: list[str], label: str, elem_id: str, info: str | None = None) -> Any:
    """A dropdown of registry names, the first selected; fixed when there is nothing to choose."""
    return gr.Dropdown(choices, value=choices[0], label=label, elem_id=elem_id, interactive=len(choices) > 1,
                       info=info)


def protocols_help() -> str:
    """Markdown: each scoring protocol's rule, and what its thresholds do to classes typed on the page."""
    lines = [f"- {describe_rule(protocol_rule(name))}" for name in protocol_choices()]
    return "\n".join([
        "Only the scoring rule changes; the head, CLIP weights and windows stay as chosen above. An upload has no "
        f"dataset, so the softmax protocols take their release's {PROTOCOL_DATASET_TITLE} values (objects named "
        "over everyday photos, the rest background).", "", *lines, "",
        "In those releases the pixels whose top class probability is below prob_thd go to the dataset's "
        "background class. The classes you type have no background, so here those pixels are **unlabelled**: "
        "the legend and classes.txt name them, and the label maps give them the index after your last class."])


def launch(service: SegmentService, host: str = DEFAULT_HOST, port: int | None = None) -> None:
    """Serve the page on host:port (port None: the first free one from 7860), print the address, block."""
    app = build_app(service)
    _, local_url, _ = app.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True, quiet=True,
        allowed_paths=[str(service.out_root)], ssr_mode=False, mcp_server=False, footer_links=["settings"],
    )
    print(f"lposs demo: open {local_url} in a browser (Ctrl+C stops it)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m lposs demo`."""
    from ..models import backbones

    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true",
                         help="untrained backbones, no download: the page works, the segmentations are meaningless")
    weights.add_argument("--demo-backbones", action="store_true",
                         help="the embedded stand-in backbones of lposs.demo and generated scenes, no download")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast for the backbones (CUDA, or a CPU with native bfloat16: AVX-512 BF16 or AMX)")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE, help="uploads longer than this are resized (pixels)")
    parser.add_argument("--short-side", type=int, default=448,
                        help="images are resized to this short side before windowing (paper: 448; smaller is faster)")
    parser.add_argument("--examples", help="a folder of example images (and an optional classes.txt, one class a line)")
    parser.add_argument("--clip-weights", default="openclip-laion2b", choices=list(backbones.CLIP_WEIGHTS),
                        help="the CLIP weights selected when the page opens (LPOSS: openclip-laion2b)")
    parser.add_argument("--clip-checkpoint", help="local open_clip weights file (offline use; used for every choice)")
    parser.add_argument("--dino-checkpoint", help="local timm weights file for the graph model (offline use)")


def run_demo(args: argparse.Namespace) -> None:
    """`python -m lposs demo`: build the config from the options and serve the page."""
    from ..hardware import use_physical_cores
    from ..models.factory import resolve_device

    device = resolve_device(args.device, "--device", "--device cpu (or auto)")  # before any weights load
    use_physical_cores()  # torch's threads = physical cores unless OMP_NUM_THREADS is set
    weights = "demo" if args.demo_backbones else "random" if args.random_weights else "real"
    config = DemoConfig(weights=weights, device=device, bf16=args.bf16, clip_weights=args.clip_weights,
                        clip_checkpoint=args.clip_checkpoint, dino_checkpoint=args.dino_checkpoint,
                        max_side=args.max_side, short_side=args.short_side, examples=args.examples)
    launch(SegmentService(config), host=args.host, port=args.port)
