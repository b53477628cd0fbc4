"""Run every benchmark in this folder and print all their ratios in one table (``make benchmarks``).

Each benchmark prints ``RATIO<TAB>case<TAB>min-ratio<TAB>median-ratio<TAB>peer`` lines and
``FIGURE<TAB>case<TAB>value<TAB>unit`` lines (see ``harness.py``); everything else it
prints passes through. A benchmark that fails is reported and the others still run;
the exit status is non-zero if any failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    only = sys.argv[1:]
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in {"harness.py", "run_all.py"})
    if only:
        scripts = [p for p in scripts if any(word in p.stem for word in only)]
    ratios, figures, failed = [], [], []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                                cwd=HERE.parent)
        for line in proc.stdout:
            print(line, end="", flush=True)
            fields = line.rstrip("\n").split("\t")
            if fields[0] == "RATIO" and len(fields) >= 5:
                ratios.append((script.stem, fields[1], float(fields[2]), float(fields[3]), fields[4]))
            elif fields[0] == "FIGURE" and len(fields) >= 4:
                figures.append((script.stem, fields[1], fields[2], fields[3]))
        if proc.wait() != 0:
            failed.append(script.name)
    print("\n| benchmark | case | emverse / peer (min) | (median) | peer |")
    print("|---|---|---|---|---|")
    for bench, case, rmin, rmed, peer in ratios:
        print(f"| {bench} | {case} | {rmin:.3f} | {rmed:.3f} | {peer} |")
    if figures:
        print("\n| benchmark | figure | value | unit |")
        print("|---|---|---|---|")
        for bench, case, value, unit in figures:
            print(f"| {bench} | {case} | {value} | {unit} |")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
