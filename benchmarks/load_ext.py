"""Cost of ``%load_ext enn_nb`` over ``import IPython`` (target: at most 0.3 s), in fresh processes.

Each repetition starts a new interpreter (cold module cache, warm disk cache), times ``import
IPython`` plus creating a shell, then ``%load_ext enn_nb``, and counts the modules the extension
brought in. Prints a table; run it with ``python benchmarks/load_ext.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

TARGET_S = 0.3
HEAVY = ("torch", "onnx", "onnxruntime", "tensorflow", "executorch", "coremltools", "ipywidgets", "numpy")

CHILD = f"""
import json, sys, time
t0 = time.perf_counter()
import IPython
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
t1 = time.perf_counter()
before = set(sys.modules)
ip.run_line_magic("load_ext", "enn_nb")
t2 = time.perf_counter()
ip.run_line_magic("config", "EnnMagics")
t3 = time.perf_counter()
added = set(sys.modules) - before
print(json.dumps({{
    "ipython_s": t1 - t0, "load_ext_s": t2 - t1, "config_s": t3 - t2,
    "modules_added": len(added),
    "heavy": sorted({{m.split(".")[0] for m in sys.modules}} & set({list(HEAVY)!r})),
}}))
"""


def measure(repeat: int) -> list[dict]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    runs = measure(args.repeat)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def lo(key: str) -> float:
        return min(r[key] for r in runs)

    ipy, ext, cfg = med("ipython_s"), med("load_ext_s"), med("config_s")
    rows = [
        ("import IPython + InteractiveShell()", f"{ipy:.3f}", f"{lo('ipython_s'):.3f}", "1.00x", "baseline"),
        ("%load_ext enn_nb", f"{ext:.3f}", f"{lo('load_ext_s'):.3f}", f"{ext / ipy:.2f}x",
         f"target <= {TARGET_S:.1f} s: {'met' if ext <= TARGET_S else 'MISSED'}"),
        ("%config EnnMagics (after load)", f"{cfg:.3f}", f"{lo('config_s'):.3f}", f"{cfg / ipy:.2f}x", ""),
    ]  # fmt: skip
    header = ("step", "median s", "min s", "vs import IPython", "verdict")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    print(f"python {sys.version.split()[0]}, {args.repeat} fresh processes each")
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    heavy = sorted({h for r in runs for h in r["heavy"]})
    print(f"modules added by %load_ext: {runs[0]['modules_added']}; heavy packages imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
