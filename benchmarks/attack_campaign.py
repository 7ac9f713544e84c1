"""A seeded attack campaign against enn_nb: every family of hostile input, at scale, one table.

Runs the generators of ``tests/security/families.py`` (the attack suite ``make test`` runs with a
few cases each) with many more fuzzing cases (truncation, byte flips, header mutations) and every
fixed gadget, path escape, special file, bomb and overwrite target. Each case runs in a forked
child with a memory limit and a timeout; the table counts, per family: tried, clean enn_nb error,
correct result, raw traceback, silent wrong result, hang/crash, code executed, data lost.

Usage: ``python benchmarks/attack_campaign.py [--fuzz 200] [--seed 0] [--families a,b] [--show-bad]``.
Exits 1 when any case ran code, lost data, hung, crashed, returned a wrong result or a raw traceback.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS", "0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=200, help="cases per fuzzing family (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--show-bad", action="store_true", help="print every case that is not clean/correct")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # forked children must not inherit busy OpenMP pools
    from tests.security.families import FAMILIES, generate
    from tests.security.runner import run_case, table

    families = [f for f in args.families.split(",") if f] or list(FAMILIES)
    rows: dict[str, dict[str, int]] = {}
    bad_total = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="enn-nb-campaign-") as tmp:
        for family in families:
            t0 = time.perf_counter()
            cases = generate(family, Path(tmp) / family, args.seed, args.fuzz)
            counts: collections.Counter[str] = collections.Counter()
            for case in cases:
                outcome, detail = run_case(case)
                counts[outcome] += 1
                if outcome not in ("clean", "correct"):
                    bad_total += 1
                    if args.show_bad:
                        print(f"  {outcome:8s} {case!r}: {detail[:300]}", file=sys.stderr)
            rows[family] = dict(counts)
            print(f"{family}: {len(cases)} cases in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\nseed {args.seed}, {args.fuzz} fuzzing cases per fuzzing family, {time.perf_counter() - started:.0f} s, "
          f"torch {torch.__version__}")
    return 1 if bad_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
