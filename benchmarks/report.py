"""Turn a pytest-benchmark JSON file into the Markdown tables of BENCHMARKS.md.

    ./dev bench --benchmark-json=bench.json && .venv/bin/python -m benchmarks.report bench.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def report(path: str) -> str:
    data = json.loads(Path(path).read_text())
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    lines = [f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical CPUs, "
             f"Python {machine.get('python_version', '?')}; run {data.get('datetime', '?')}", ""]
    lines += ["| benchmark | median ms | extra |", "|---|---:|---|"]
    for bench in data["benchmarks"]:
        extra = ", ".join(f"{k}={v}" for k, v in bench.get("extra_info", {}).items())
        lines.append(f"| `{bench['name']}` | {1e3 * bench['stats']['median']:.2f} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1]))
