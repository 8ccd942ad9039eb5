"""``make bench``: every benchmark behind BENCHMARKS.md, results as JSON under benchmarks/results/.

    python benchmarks/run_all.py [--full]

Without ``--full`` the slow parts are cut short (100 images for the evaluation timing, no search).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--full",
        action="store_true",
        help="1,000-image evaluation timing, the sensitivity check and the search comparison",
    )
    a = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    py = sys.executable
    run([py, "-m", "qdit", "bench", "--json", str(RESULTS / "bench_quant.json")])
    run(
        [
            py,
            str(HERE / "bench_eval.py"),
            *([] if a.full else ["--quick"]),
            "--json",
            str(RESULTS / "bench_eval.json"),
        ]
    )
    if a.full:
        run([py, str(HERE / "bench_sensitivity.py")])
        run([py, str(HERE / "bench_search.py")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
