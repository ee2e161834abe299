"""DVC's own views after a run: `dvc plots show` / `diff` readable offline, and a baseline for the experiments.

    python -m lposs.experiment.dvc_views         # make repro runs it after dvc repro

1. DVC's own page loads Vega, Vega-Lite and vega-embed from a CDN, so without a network its charts stay
   blank. This writes `.dvc/plots/offline.html`, DVC's page with the three libraries inlined from the bundle
   that vl-convert-python (the Vega project's converter, a PyPI package) ships, and points this clone's DVC at
   it (`dvc config --local plots.html_template plots/offline.html`: `.dvc/config.local`, never committed). A
   clone that has not run it keeps DVC's default page. The page is rewritten only when the libraries change.
2. `dvc exp show`, `dvc metrics diff` and `dvc plots diff` compare with the commit (HEAD): while the run's
   `dvc.lock` is not committed there, HEAD has no results to show. This says exactly what to commit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ..io import atomic_write_bytes

TEMPLATE = Path("plots") / "offline.html"  # relative to .dvc/, as DVC reads plots.html_template
VEGA_LITE = "5.21"  # the schema generation of DVC's plot templates (vega-lite v5)
# DVC fills these three placeholders; without "{scripts}" it adds none of its CDN <script> tags
PLACEHOLDERS = ("{refresh_tag}", "{plot_divs}")


def page_template(bundle: str, versions: str) -> str:
    """DVC's page (dvc_render's PAGE_HTML) with `bundle` inlined in place of the CDN scripts."""
    for text in PLACEHOLDERS + ("{scripts}", "</script"):
        if text in bundle:  # DVC's str.replace would write into the library; a "</script" would end it early
            raise ValueError(f"the Vega bundle contains {text!r}: it cannot be inlined into DVC's page")
    return ("<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset=\"utf-8\">\n"
            "    <title>DVC Plot</title>\n"
            f"    <!-- {versions}, inlined by python -m lposs.experiment.dvc_views: no network needed -->\n"
            f"    <script type=\"text/javascript\">\n{bundle}\n    </script>\n"
            "    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n"
            "</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n")


def vega_bundle() -> tuple[str, str]:
    """(Vega + Vega-Lite + vega-embed as one script defining window.vegaEmbed, their versions)."""
    try:
        import vl_convert
    except ImportError:
        raise RuntimeError("the offline plots page needs vl-convert-python: pip install 'lposs[pipeline]' "
                           "(or: make install)") from None
    versions = (f"Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE}, vega-embed "
                f"{vl_convert.get_vega_embed_version()} from vl-convert-python {vl_convert.__version__}")
    return vl_convert.javascript_bundle(vl_version=VEGA_LITE), versions


def write_template(dvc_dir: str | Path = ".dvc") -> Path:
    """Write `<dvc_dir>/plots/offline.html` (unless it already holds this page); -> its path."""
    path = Path(dvc_dir) / TEMPLATE
    page = page_template(*vega_bundle()).encode()
    if not path.is_file() or path.read_bytes() != page:
        atomic_write_bytes(path, page)
    return path


def uncommitted_run_files(root: str | Path = ".") -> list[str] | None:
    """The files of a `dvc repro` that git does not hold as they are now (dvc.lock, .dvc files, the .gitignore
    files DVC edits); None outside a git repository."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "dvc.lock", "*.dvc",
                                 ".gitignore", "*/.gitignore"], cwd=root, capture_output=True, text=True, check=False)
    except OSError:  # no git, or no such folder
        return None
    if status.returncode != 0:
        return None
    return sorted(line[3:].strip() for line in status.stdout.splitlines() if line.strip())


def baseline_hint(files: list[str] | None, lock_at_head: bool) -> str | None:
    """What to commit so that DVC's comparisons have this run as their baseline (None: nothing to commit)."""
    if not files or "dvc.lock" not in files:
        return None
    commit = f"    git add {' '.join(files)} && git commit -m \"Pipeline run: dvc.lock\""
    if lock_at_head:
        return ("This run's dvc.lock differs from the committed one (the code or params.yaml changed since). To make\n"
                "it the baseline that dvc exp show, dvc metrics diff and dvc plots diff compare with, commit it:\n"
                + commit)
    return ("dvc.lock of this run is not committed, so `dvc exp show` has no baseline row and `dvc metrics diff` /\n"
            "`dvc plots diff` find no results at HEAD. To compare your experiments (dvc exp run -S lp.alpha=0.9,\n"
            "after `source .venv/bin/activate`: the stages call the venv's python) with this run, commit it:\n"
            + commit)


def lock_committed(root: str | Path = ".") -> bool:
    return subprocess.run(["git", "cat-file", "-e", "HEAD:dvc.lock"], cwd=root, capture_output=True, check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lposs.experiment.dvc_views", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dvc-dir", default=".dvc", help="the repository's .dvc folder (default: .dvc)")
    parser.add_argument("--no-config", action="store_true",
                        help="only write the page; do not set plots.html_template in .dvc/config.local")
    args = parser.parse_args(argv)
    if not Path(args.dvc_dir).is_dir():
        print(f"error: {args.dvc_dir} is not a folder: run this in the repository root (after dvc init)",
              file=sys.stderr)
        return 1
    try:
        path = write_template(args.dvc_dir)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    root = Path(args.dvc_dir).parent
    if args.no_config:
        print(f"wrote {path}; use it with dvc plots show --html-template {path}")
    else:
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", TEMPLATE.as_posix()],
                       cwd=root, check=True)
        print(f"dvc plots show / dvc plots diff: an offline page ({path}, set in .dvc/config.local)")
    hint = baseline_hint(uncommitted_run_files(root), lock_committed(root))
    if hint:
        print(hint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
