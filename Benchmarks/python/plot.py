"""Draws a benchmark report's main results as one PNG.

    plot.py REPORT.md OUT.png

REPORT.md is what MemcachedBench writes (Benchmarks/results/latest.md) or BENCHMARKS.md. Left: each
client's throughput as a ratio to raw libmemcached C, per workload, from the "Throughput" table.
Right: W8 (90 % get / 10 % set) throughput by the number of tasks or threads, from the first W8
table ("### W8: ..."), when the report has one.
"""

import re
import sys

import matplotlib

matplotlib.use("Agg")  # no display: render straight to the file
import matplotlib.pyplot as plt  # noqa: E402

CLIENTS = ["ours sync", "ours async", "pylibmc", "pymemcache", "python-memcached"]
COLORS = {
    "ours sync": "#1f6feb",
    "ours async": "#6cb6ff",
    "raw C": "#444444",
    "pool": "#1f6feb",
    "pylibmc": "#d97706",
    "pymemcache": "#9ca3af",
    "python-memcached": "#16a34a",
}
# Ratios above this are drawn at it, with their value written: pymemcache's reply-less writes
# (14x, 41x) would flatten every other bar.
RATIO_CAP = 2.0


def tables(lines):
    """Yields (heading, rows) for every Markdown table, rows as lists of cell strings."""
    heading, rows = "", []
    for line in lines + [""]:
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells if cell):
                rows.append(cells)
        elif rows:
            yield heading, rows
            rows = []


def number(text):
    match = re.match(r"[\d,]+(\.\d+)?", text.replace(" ", ""))
    return float(match.group(0).replace(",", "")) if match else None


def throughput_ratios(report):
    for heading, rows in tables(report):
        header = rows[0]
        if header[:3] == ["workload", "unit", "raw C"]:
            result = []
            for row in rows[1:]:
                ratios = {}
                for client in CLIENTS:
                    if client in header:
                        cell = row[header.index(client)]
                        found = re.search(r"\(([\d.]+)\)", cell)
                        if found:
                            ratios[client] = float(found.group(1))
                result.append((row[0], ratios))
            return result
    return []


def w8_throughput(report):
    """Series name -> [(tasks or threads, ops/s)] from the first table under a 'W8: ' heading."""
    for heading, rows in tables(report):
        if not heading.startswith("W8:") or rows[0][:2] != ["variant", "ops/s median"]:
            continue
        series = {}
        for row in rows[1:]:
            variant, ops = row[0], number(row[1])
            found = re.match(r"(raw C|pool|pylibmc|pymemcache|python-memcached),? (\d+) (task|thread)s?$", variant)
            if found and ops is not None:
                series.setdefault(found.group(1), []).append((int(found.group(2)), ops))
        return heading, series
    return None, {}


def main(report_path, image_path):
    with open(report_path, encoding="utf-8") as report_file:
        report = report_file.read().splitlines()
    ratios = throughput_ratios(report)
    w8_heading, w8 = w8_throughput(report)
    if not ratios:
        sys.exit(f"{report_path}: no throughput table")

    figure, axes = plt.subplots(1, 2 if w8 else 1, figsize=(15 if w8 else 9, 7), squeeze=False)
    left = axes[0][0]
    workloads = [name for name, _ in ratios]
    height = 0.8 / len(CLIENTS)
    for index, client in enumerate(CLIENTS):
        for row, (_, values) in enumerate(ratios):
            if client not in values:
                continue
            value = values[client]
            y = row + (index - (len(CLIENTS) - 1) / 2) * height
            left.barh(y, min(value, RATIO_CAP), height, color=COLORS[client],
                      label=client if row == next(r for r, (_, v) in enumerate(ratios) if client in v) else None)
            if value > RATIO_CAP:
                left.text(RATIO_CAP, y, f" {value:g}x", va="center", fontsize=7)
    left.axvline(1.0, color=COLORS["raw C"], linewidth=1, linestyle="--")
    left.set_yticks(range(len(workloads)), workloads)
    left.invert_yaxis()
    left.set_xlim(0, RATIO_CAP + 0.3)
    left.set_xlabel("throughput, ratio to raw libmemcached C in the same run (dashed line = 1)")
    left.set_title("Throughput by workload")
    left.legend(loc="lower right", fontsize=8)

    if w8:
        right = axes[0][1]
        for name, points in sorted(w8.items()):
            points.sort()
            label = {"pool": "MemcachedClient (tasks)"}.get(name, f"{name} (threads)")
            right.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                       color=COLORS.get(name, "#000000"), label=label)
        right.set_xscale("log", base=2)
        right.set_xlabel("tasks or threads")
        right.set_ylabel("ops/s")
        right.set_title(w8_heading.split(" (")[0] + ": throughput by concurrency")
        right.legend(fontsize=8)
        right.grid(alpha=0.3)

    figure.suptitle(f"swift-libmemcached benchmarks ({report_path.rsplit('/', 1)[-1]})")
    figure.tight_layout()
    figure.savefig(image_path, dpi=110)
    print(f"wrote {image_path}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
