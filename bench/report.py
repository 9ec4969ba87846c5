"""Turn a pytest-benchmark JSON file into the markdown table kept beside it in bench/results/.

Conventions every benchmark here follows: ``group`` names the case (op and shape), the
``impl`` parameter names the implementation, and ``impl == "eager"`` is the baseline each
speedup is measured against (same run, same machine). ``extra_info`` columns (GB/s, device,
...) are copied into the table.

    python bench/report.py bench/results/cpu-group_cross_entropy.json  # writes the .md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def _machine(info: dict) -> str:
    cpu = info.get("cpu", {})
    brand = cpu.get("brand_raw") or info.get("processor") or "unknown CPU"
    cores = cpu.get("count", "?")
    return f"{brand}, {cores} cores, {info.get('system', '')} {info.get('release', '')}".strip()


def render(data: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"] or bench["name"]].append(bench)
    extra_keys = sorted({k for b in data["benchmarks"] for k in b.get("extra_info", {})})
    devices = sorted({str(b["extra_info"]["device"]) for b in data["benchmarks"] if "device" in b.get("extra_info", {})})
    lines = [
        f"Machine: {_machine(data['machine_info'])}" + (f"; device: {', '.join(devices)}" if devices else ""),
        f"Run: {data.get('datetime', '')}, torch {data['machine_info'].get('torch_version', '')}".removesuffix(", torch "),
        "",
        "| case | impl | median (ms) | IQR (ms) | speedup vs eager | "
        + " | ".join(k for k in extra_keys if k != "device")
        + " |",
        "|---|---|---|---|---|" + "---|" * len([k for k in extra_keys if k != "device"]),
    ]
    for group, benches in groups.items():
        eager = next((b for b in benches if b["params"].get("impl") == "eager"), None)
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            med = b["stats"]["median"]
            speedup = f"{eager['stats']['median'] / med:.2f}x" if eager else "n/a"
            extras = [_fmt(b.get("extra_info", {}).get(k, "")) for k in extra_keys if k != "device"]
            lines.append(
                f"| {group} | {b['params'].get('impl', b['name'])} | {med * 1e3:.3f} | "
                f"{b['stats']['iqr'] * 1e3:.3f} | {speedup} | " + " | ".join(extras) + " |"
            )
    return "\n".join(lines) + "\n"


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        data = json.loads(path.read_text())
        out = path.with_suffix(".md")
        out.write_text(f"# {path.stem}\n\n" + render(data))
        print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
