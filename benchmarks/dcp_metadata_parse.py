"""DCP ``.metadata`` parsing: enn_nb's checked reader next to the plain ``pickle.loads`` torch's own reader does.

enn_nb unpickles DCP metadata with Python's pure-Python unpickler so that every ``BUILD`` and item opcode
is checked before it runs (a pickle could otherwise set attributes on a shared class), then checks
the object field by field. torch's ``FileSystemReader.read_metadata`` is one C ``pickle.loads``. For
models of several sizes (``nn.Linear(4, 4)`` layers saved by ``enn_nb.save`` as DCP), each side
parses the same bytes ``--reps`` times, interleaved; the best and the median are kept.

Usage: ``python benchmarks/dcp_metadata_parse.py [--sizes 100,1000,3000] [--reps 7]``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,3000", help="layers (two tensors each) per model")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)

    import torch

    import enn_nb
    from enn_nb.checkpoint import dcp_metadata

    torch.set_num_threads(1)
    rows = [("tensors", "metadata bytes", "pickle.loads best/median ms", "enn_nb best/median ms", "ratio (best)")]
    with tempfile.TemporaryDirectory(prefix="enn-nb-dcp-meta-") as tmp:
        for layers in (int(s) for s in args.sizes.split(",")):
            model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(layers)])
            path = Path(tmp) / f"m{layers}"
            enn_nb.save(model, path, spec={"builder": "x"})
            data = (path / ".metadata").read_bytes()
            plain, ours = [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                pickle.loads(data)
                plain.append(time.perf_counter() - t)
                t = time.perf_counter()
                dcp_metadata.unpickle(data, where=str(path))
                ours.append(time.perf_counter() - t)
            rows.append((str(2 * layers), str(len(data)), f"{min(plain) * 1e3:.1f} / {statistics.median(plain) * 1e3:.1f}",
                         f"{min(ours) * 1e3:.1f} / {statistics.median(ours) * 1e3:.1f}", f"{min(ours) / min(plain):.1f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(f"\n{args.reps} interleaved reps, 1 torch thread, python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
