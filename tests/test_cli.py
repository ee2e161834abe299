"""The command line: class parsing, offline failure, and a random-weights smoke run."""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lposs.app.cli import parse_classes, write_outputs


def test_parse_classes_semicolons_between_classes_commas_between_synonyms(tmp_path):
    assert parse_classes("cow; grass, lawn ; sky;", None) == ["cow", "grass;lawn", "sky"]
    path = tmp_path / "classes.txt"
    path.write_text("background;wall\ncat\n")
    assert parse_classes(None, str(path)) == ["background;wall", "cat"]
    with pytest.raises(SystemExit, match="no class names"):
        parse_classes(" ; ", None)


def test_outputs_are_a_palette_label_map_and_an_overlay(tmp_path):
    image = np.full((20, 30, 3), 128, dtype=np.uint8)
    labels = np.zeros((20, 30), dtype=np.int64)
    labels[:, 15:] = 1
    overlay = write_outputs(image, labels, ["cow", "sky"], tmp_path / "seg.png", warning=None)
    saved = Image.open(tmp_path / "seg.png")
    assert saved.mode == "P" and np.array_equal(np.asarray(saved), labels)
    assert Image.open(overlay).size[0] == 30


def test_class_colours_are_far_apart_and_legends_scale_with_the_image(tmp_path):
    import torch

    from lposs.core.color import rgb_to_lab
    from lposs.io import palette

    colours = palette(256)
    assert len({tuple(c) for c in colours}) == 256 and palette(3).tolist() == colours[:3].tolist()
    lab = rgb_to_lab(torch.tensor(colours[:20].T[:, :, None] / 255.0, dtype=torch.float32))[..., 0].T
    distance = torch.cdist(lab, lab) + 1e3 * torch.eye(20)
    assert distance[:8, :8].min() > 30  # the demo's 8 classes (water and sand were 16.7 apart before)
    assert distance.min() > 14  # CIE76 Delta E: 2.3 is just noticeable
    bands = {}
    for width in (320, 960):
        image = np.full((100, width, 3), 128, dtype=np.uint8)
        labels = np.zeros((100, width), dtype=np.int64)
        overlay = Image.open(write_outputs(image, labels, ["water", "sand"], tmp_path / f"{width}.png", None))
        bands[width] = overlay.size[1] - 100
    assert bands[320] >= 2 * 14 and bands[960] > bands[320]  # text of 14 px or more, larger on larger images


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lposs", *args], capture_output=True, text=True, timeout=timeout)


def test_missing_image_is_named(tmp_path):
    result = run_cli("segment", str(tmp_path / "nope.png"), "--classes", "cow", "--out", str(tmp_path / "o.png"),
                     "--random-weights")
    assert result.returncode != 0 and "nope.png" in result.stderr


@pytest.mark.slow
def test_random_weights_smoke_run_warns_and_writes(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (120, 160, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "seg.png"
    result = run_cli("segment", str(image), "--classes", "cow; grass; sky", "--out", str(out), "--random-weights",
                     "--mode", "lposs")
    assert result.returncode == 0, result.stderr
    assert "meaningless" in result.stderr
    labels = np.asarray(Image.open(out))
    assert labels.shape == (120, 160) and labels.max() < 3
    assert (tmp_path / "seg_overlay.png").exists()


@pytest.mark.slow
def test_without_weights_it_stops_naming_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    result = run_cli("segment", str(image), "--classes", "cow", "--out", str(tmp_path / "o.png"), timeout=120)
    if result.returncode == 0:
        pytest.skip("the pretrained weights are cached on this machine")
    assert "--clip-checkpoint" in result.stderr and "laion2b_s34b_b88k" in result.stderr


# ------------------------------------------------------------ messages that name the input and the fix (fast)

def segment_error(tmp_path, *args) -> str:
    """The one-line error `python -m lposs segment ...` stops with (run in-process: it fails before any model)."""
    from lposs.app.cli import main

    with pytest.raises(SystemExit) as info:
        main(["segment", *args, "--out", str(tmp_path / "o.png")])
    return str(info.value.code)


def test_a_users_bad_image_is_named_with_advice_for_a_photo(tmp_path):
    photo = tmp_path / "holiday.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(photo)
    (tmp_path / "broken.png").write_bytes(photo.read_bytes()[:60])
    (tmp_path / "notes.txt").write_text("not a picture\n")
    for name, says in (("broken.png", "truncated"), ("notes.txt", "not in an image format")):
        message = segment_error(tmp_path, str(tmp_path / name), "--classes", "cow")
        assert str(tmp_path / name) in message and says in message and "PNG, JPEG" in message
        assert "re-run the fetch" not in message  # dataset advice is for dataset files only
    message = segment_error(tmp_path, str(tmp_path), "--classes", "cow")
    assert f"image {tmp_path} is a folder" in message and "pass the path of one image" in message


def test_a_dataset_image_that_cannot_be_read_gets_the_fetch_advice(tmp_path):
    from lposs.datasets import get_dataset
    from lposs.demo import generate_demo

    ds = get_dataset("demo", generate_demo(tmp_path / "demo", count=1, seed=0, size=(64, 64)))
    ds.items[0].image.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="re-download it"):
        ds[0]


def test_a_missing_or_unreadable_classes_file_is_named(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(photo)
    message = segment_error(tmp_path, str(photo), "--classes-file", str(tmp_path / "classes.txt"))
    assert message == f"error: --classes-file: class list {tmp_path / 'classes.txt'} does not exist: pass a text " \
                      "file with one class name per line"
    assert "is a folder" in segment_error(tmp_path, str(photo), "--classes-file", str(tmp_path))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00cow")
    assert "not UTF-8 text" in segment_error(tmp_path, str(photo), "--classes-file", str(tmp_path / "binary.txt"))


def test_cuda_without_a_gpu_stops_at_once_suggesting_cpu(tmp_path):
    import time

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(photo)
    start = time.perf_counter()
    message = segment_error(tmp_path, str(photo), "--classes", "cow", "--device", "cuda")
    assert "--device 'cuda'" in message and "no GPU" in message and "use --device cpu" in message
    assert time.perf_counter() - start < 2.0  # before any weights load
    assert "choose one of auto, cpu, cuda" in segment_error(tmp_path, str(photo), "--classes", "cow",
                                                            "--device", "gpu")


def test_an_unknown_dataset_name_suggests_the_closest(capsys):
    from lposs.datasets.cli import main_data

    assert main_data(["check", "ade20"]) == 1
    err = capsys.readouterr().err
    assert "unknown dataset 'ade20' (did you mean 'ade20k'?)" in err and "python -m lposs data list" in err


def test_every_option_of_segment_data_check_and_the_experiments_has_a_help_text():
    from lposs.app.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    check = commands["data"]._subparsers._group_actions[0].choices["check"]
    for sub in (commands["segment"], check, commands["paper"], commands["mess"], commands["stream"]):
        undocumented = [action.dest for action in sub._actions if not action.help]
        assert undocumented == [], f"{sub.prog}: no help for {undocumented}"


@pytest.mark.slow
def test_demo_backbones_segment_offline(tmp_path):
    """`segment --demo-backbones`: the embedded stand-ins, no download, on a generated demo scene."""
    from lposs.demo import generate_demo

    root = generate_demo(tmp_path / "demo", count=1, seed=0, size=(224, 256))
    image = next((root / "images").iterdir())
    out = tmp_path / "seg.png"
    result = run_cli("segment", str(image), "--classes", "sky; tree; grass, lawn; water; road; building; cow; sand",
                     "--demo-backbones", "--short-side", "224", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "DEMO STAND-INS" in result.stderr
    labels = np.asarray(Image.open(out))
    assert labels.shape == (224, 256) and labels.max() < 8 and len(np.unique(labels)) > 1


def imported_modules(*args: str) -> set[str]:
    """The modules a fresh `python -m lposs ARGS` imports (python -X importtime lists each once on stderr)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "lposs", *args], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_start_up_imports_only_what_the_command_needs():
    top = imported_modules("--help")
    assert "lposs.app.cli" in top and not {m for m in top if m == "torch" or m.startswith("torch.")}
    segment = imported_modules("segment", "--help")
    assert "torch" in segment and "lposs.models.heads" in segment  # the test sees imports at all
    heavy = {m for m in segment if m.startswith(("lposs.app.webapp", "lposs.experiment", "lposs.datasets.convert",
                                                  "lposs.datasets.fetching", "lposs.datasets.mess_prepare",
                                                  "gradio", "dvc", "papermill"))}
    assert heavy == set()
    assert "lposs.app.webapp" in imported_modules("demo", "--help")


DOOR = ("segment", "demo", "data", "paper", "mess", "stream")


def modules_after(*args: str) -> set[str]:
    """sys.modules of a fresh interpreter once `lposs ARGS` (the installed command's main) has returned."""
    code = ("import sys\nfrom lposs.app.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\nprint('MODULES', *sorted(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.rsplit("MODULES", 1)[1].split())


@pytest.mark.parametrize("command", ["", "data", "paper", "mess", "stream"])
def test_the_door_and_its_experiment_commands_answer_help_without_torch(command):
    modules = modules_after(*([command] if command else []), "--help")
    assert "lposs.app.cli" in modules and "torch" not in modules
    if command in ("paper", "mess", "stream"):
        assert "lposs.experiment.commands" in modules  # their options came from there, not from the heavy modules
        assert not {"lposs.experiment.paper", "lposs.experiment.streaming"} & modules


@pytest.mark.parametrize("command", ["segment", "demo"])
def test_segment_and_demo_help_import_the_registries_they_list(command):
    assert "torch" in modules_after(command, "--help")  # their choices come from the model registries


def test_the_installed_command_offers_every_entry_point():
    script = Path(sys.executable).with_name("lposs")
    if not script.exists():
        pytest.skip(f"no installed `lposs` command beside {sys.executable} (pip install -e . installs it)")
    result = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(command in result.stdout for command in DOOR)


@pytest.mark.parametrize("module, args, option", [("lposs.experiment", ["paper", "--help"], "--check"),
                                                  ("lposs.experiment", ["mess", "--help"], "--protocol"),
                                                  ("lposs.experiment.streaming", ["--help"], "--batch-images")])
def test_the_old_module_paths_keep_working(module, args, option):
    result = subprocess.run([sys.executable, "-m", module, *args], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and option in result.stdout


def test_the_make_targets_call_the_door():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    for target in ("paper", "mess", "demo"):
        recipe = makefile.split(f"\n{target}: ", 1)[1].split("\n\n", 1)[0]
        assert f"$(PY) -m lposs {target}" in recipe, recipe


def test_head_params_are_name_value_pairs_read_as_yaml():
    from lposs.app.cli import head_param

    assert head_param("sigma=3") == ("sigma", 3)
    assert head_param("checkpoint=/tmp/last.pt") == ("checkpoint", "/tmp/last.pt")
    assert head_param("checkpoint=null") == ("checkpoint", None)
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
        head_param("sigma")


def test_an_unknown_head_parameter_stops_before_any_weights_naming_the_heads(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    error = segment_error(tmp_path, str(image), "--classes", "cow", "--head", "naclip", "--head-param", "sigmaa=3")
    assert "no parameter 'sigmaa'" in error and "sigma" in error


def test_mode_own_for_a_head_without_an_own_step_stops_before_any_weights(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    error = segment_error(tmp_path, str(image), "--classes", "cow", "--head", "maskclip", "--mode", "own")
    assert "no own post-step" in error and "lavg" in error and "--mode maskclip" in error
