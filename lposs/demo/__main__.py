"""python -m lposs.demo --out data/demo: regenerate the pinned demo set (same seed, same bytes)."""

from __future__ import annotations

import argparse

from .scenes import DEFAULT_COUNT, DEFAULT_SEED, DEFAULT_SIZE, generate_demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lposs.demo",
                                     description="Regenerate the embedded demo dataset (synthetic scenes, exact labels).")
    parser.add_argument("--out", default="data/demo", help="folder to (re)write (default: data/demo)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="number of scenes")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--size", type=int, nargs=2, default=DEFAULT_SIZE, metavar=("H", "W"))
    args = parser.parse_args(argv)
    out = generate_demo(args.out, count=args.count, seed=args.seed, size=tuple(args.size))
    print(f"wrote {args.count} synthetic demo scenes to {out}")


if __name__ == "__main__":
    main()
