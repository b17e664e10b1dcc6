"""`python -m demo [--root DIR] [--seed N] [--force]`: make the demo pair, show its classes."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from demo.write import (
    DEMO_ROOT,
    DemoPaths,
    DemoRootError,
    ensure_demo,
    frequency_table,
    generate_demo,
)


def main(argv=None):
    description = sys.modules["demo"].__doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m demo", description=description)
    parser.add_argument("--root", type=Path, default=DEMO_ROOT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.force:
            generate_demo(args.root, seed=args.seed)
            paths = DemoPaths.of(args.root)
        else:
            paths = ensure_demo(args.root, seed=args.seed)
    except DemoRootError as e:   # a folder the demo may not replace: say so, no traceback
        sys.exit(f"error: {e}")
    print(f"demo pair (seed {args.seed}) at {paths.root} [{time.perf_counter() - start:.1f} s]")
    print(f"  source (GTA5 layout):       {paths.source}")
    print(f"  target (Cityscapes layout): {paths.target}")
    print("\npixel share of each class (train ids):")
    print(frequency_table(paths))
