"""``python -m lposs data ...``: list the benchmarks, fetch one, check one.

The package CLI calls ``main_data(argv)`` with the arguments after ``data`` (or mounts
``add_data_subcommands`` on its own argparse sub-parser and dispatches to ``run_data``).

    python -m lposs data list
    python -m lposs data fetch NAME [--root DIR] [--mirror URL] [--quiet]
    python -m lposs data check NAME [--root DIR] [--split SPLIT] [--samples N]
"""

from __future__ import annotations

import argparse
import sys

from .fetching import ChecksumError, DownloadError, fetch
from .registry import DATASETS, default_root, get_dataset
from .sources import MIRROR_ENV, SOURCES


def add_data_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add list / fetch / check sub-commands to ``parser``."""
    commands = parser.add_subparsers(dest="data_command", required=True)
    commands.add_parser("list", help="list the registered datasets and where they are expected")
    fetch_parser = commands.add_parser("fetch", help="download, verify, extract and convert a dataset")
    fetch_parser.add_argument("name", help="dataset name (see `data list`)")
    fetch_parser.add_argument("--root", help="dataset folder (default: $LPOSS_DATA/<folder> or data/<folder>)")
    fetch_parser.add_argument("--mirror", help=f"base URL serving the files by name (or ${MIRROR_ENV})")
    fetch_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    check_parser = commands.add_parser("check", help="load a dataset and read a few samples")
    check_parser.add_argument("name", help="dataset name (see `data list`)")
    check_parser.add_argument("--root", help="dataset folder (default: $LPOSS_DATA/<folder> or data/<folder>)")
    check_parser.add_argument("--split", help="split to read (default: the dataset's evaluation split, "
                                              "as `data list` shows)")
    check_parser.add_argument("--samples", type=int, default=3, help="samples to read (0 = all)")


def list_datasets() -> str:
    """One line per dataset: name, default split, size, default folder, presence, description."""
    lines = [f"{'name':17} {'split':14} {'images':>6}  {'folder':24} {'status':8} description"]
    for name, spec in DATASETS.items():
        root = default_root(name)
        status = "present" if root.is_dir() else "absent"
        source = SOURCES.get(spec.folder)
        how = "auto"
        if name == "demo":
            how = "generated"
        elif spec.manual or (source and any(a.url is None for a in source.archives)):
            how = "manual"
        images = spec.images if spec.images is not None else "-"
        lines.append(f"{name:17} {spec.default_split:14} {images!s:>6}  {str(root):24} {status:8} "
                     f"{spec.description} [{how}]")
    return "\n".join(lines)


def check_dataset(name: str, root=None, split=None, samples: int = 3) -> str:
    dataset = get_dataset(name, root, split)
    count = len(dataset) if samples <= 0 else min(samples, len(dataset))
    for i in range(count):
        dataset[i]
    return f"{dataset!r}: read {count} sample(s) without error"


def run_data(args: argparse.Namespace) -> int:
    """Execute parsed ``data`` arguments; errors print one clear message and return 1."""
    try:
        if args.data_command == "list":
            print(list_datasets())
        elif args.data_command == "fetch":
            fetch(args.name, args.root, progress=not args.quiet, mirror=args.mirror)
        elif args.data_command == "check":
            print(check_dataset(args.name, args.root, args.split, args.samples))
    except (ValueError, FileNotFoundError, DownloadError, ChecksumError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main_data(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m lposs data ARGS``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lposs data", description="segmentation benchmarks")
    add_data_subcommands(parser)
    return run_data(parser.parse_args(argv))
