"""Charts of a bench run: our server beside raw aiohttp and python-socketio, scenario by scenario.

    python -m bench.charts                    # redraw from bench/RESULTS.json, the committed run
    python -m bench.charts other.json         # from another run's JSON (bench/results-*.json)
    python -m bench.charts --from-markdown bench/RESULTS.md   # a run whose JSON was not kept

`python -m bench` draws them at the end of every run. They are PNG files in `charts/` next
to the results (bench/charts/ for bench/RESULTS.md), and the Markdown file beside the JSON
shows them: an overview and the memory per connection under "Charts", each scenario's under
its own heading. Each bar is the median over the rounds, each dot one round: the dots show
how far one measurement on this shared machine can be trusted.

`--from-markdown` rebuilds the JSON from the tables of a RESULTS.md, for runs from before
the JSON was kept next to it: a table gives each round's server CPU per unit, and only the
median of the other figures (RSS per connection), which it repeats in every round.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/charts.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import GROUPS, SERVERS, Group  # noqa: E402

BENCH = Path(__file__).resolve().parent
Results = dict[str, dict[str, list[dict[str, Any]]]]

# Who a server is, for its colour: ours in blues, the references in their own colours.
FAMILIES = {"ours": "#1f5fa8", "raw": "#8c8c8c", "rawstr": "#b5b5b5", "rawsession": "#5a9e6f", "sio": "#e07b24"}
OURS_SHADES = ["#1f5fa8", "#3d7cc9", "#6a9bd8", "#9dbde6", "#2b4f7e", "#4f6f9f", "#7d93b8", "#aebbd3"]
# The groups drawn one chart each: the others (soak, attacks, isolation) have figures of their own shape.
DRAWN = ("echo", "fanout", "handshake", "idle", "storm1k", "storm5k")
# The overview: each scenario with ours and the references that matter most.
OVERVIEW = [("echo", "(a) echo with ack", ("ours", "ours-redis", "raw", "sio")),
            ("fanout", "(c) fan-out to 1,000 sockets", ("ours", "raw", "sio")),
            ("handshake", "(d) handshake", ("ours", "ours-redis", "raw-session", "raw", "sio")),
            ("idle", "(e) opening an idle connection", ("ours", "ours-redis", "raw-session", "raw", "sio"))]
MEMORY = ("ours", "ours-redis", "raw-session", "raw", "sio")
MARK = "<!-- chart -->"  # ends every line this module writes into a Markdown file


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        sys.exit("bench.charts: matplotlib is not installed (pip install '.[bench]')")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r]


def _colour(key: str, ours_seen: list[str]) -> str:
    kind = SERVERS[key].kind if key in SERVERS else "ours"
    if kind != "ours":
        return FAMILIES[kind]
    if key not in ours_seen:
        ours_seen.append(key)
    return OURS_SHADES[ours_seen.index(key) % len(OURS_SHADES)]


def _label(key: str) -> str:
    return SERVERS[key].label if key in SERVERS else key


def _us(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def _bars(ax: Any, rows: list[tuple[str, float, list[float]]], title: str, xlabel: str,
          text: Any = _us, scale: float = 1e6, limit: tuple[float, str] | None = None) -> None:
    """Horizontal bars (medians) with a dot per round; the first row on top."""
    seen: list[str] = []
    colours = [_colour(key, seen) for key, _, _ in rows]
    for y, ((key, median, rounds), colour) in enumerate(zip(reversed(rows), reversed(colours))):
        ax.barh(y, median * scale, color=colour, height=0.6)
        if len(set(rounds)) > 1:  # one figure repeated (a table's median) is no spread
            ax.scatter([r * scale for r in rounds], [y] * len(rounds), s=9, color="black", zorder=3, alpha=0.6)
        ax.text(max(median, *rounds) * scale, y, "  " + text(median), va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [_label(k) for k, _, _ in reversed(rows)], fontsize=8)
    if limit is not None:
        ax.axvline(limit[0] * scale, color="#c0392b", linestyle="--", linewidth=1)
        ax.text(limit[0] * scale, len(rows) - 0.4, " " + limit[1], color="#c0392b", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.margins(x=0.25)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _cpu_rows(results: dict[str, list[dict[str, Any]]], keys: tuple[str, ...] | None = None
              ) -> list[tuple[str, float, list[float]]]:
    rows = []
    for key in keys or tuple(results):
        ok = _ok(results.get(key, []))
        rounds = [r["server_cpu_per_unit"] for r in ok if r.get("server_cpu_per_unit")]
        median = _median(rounds)
        if median is not None:
            rows.append((key, median, rounds))
    return rows


def _unit(results: dict[str, list[dict[str, Any]]]) -> str:
    for runs in results.values():
        for r in _ok(runs):
            return str(r.get("unit", "unit"))
    return "unit"


def _connections(results: dict[str, list[dict[str, Any]]]) -> str:
    for runs in results.values():
        for r in _ok(runs):
            if r.get("connections"):
                return f"{r['connections']:,}"
    return f"{_group('idle').connections:,}"


def _group(name: str) -> Group:
    return next(g for g in GROUPS if g.name == name)


def draw(results: Results, out: Path) -> list[Path]:
    """Every chart of `results` into the folder `out`; returns the files written."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        path = out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    panels = [(name, title, _cpu_rows(results[name], keys)) for name, title, keys in OVERVIEW if name in results]
    panels = [p for p in panels if p[2]]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.0 + 1.15 * sum(len(p[2]) for p in panels) / 2.2))
        for ax, (name, title, rows) in zip(axes if len(panels) > 1 else [axes], panels):
            _bars(ax, rows, f"{title}: server CPU per {_unit(results[name])}", "")
        fig.suptitle("Server CPU per unit of work (lower is better; one core, medians, dots: rounds)", fontsize=10)
        save(fig, "overview")
    idle = results.get("idle", {})
    rss = [(k, m, rounds) for k in MEMORY if (rounds := [r["rss_per_connection"] for r in _ok(idle.get(k, []))
                                                          if r.get("rss_per_connection")])
           and (m := _median(rounds)) is not None]
    if rss:
        fig, ax = plt.subplots(figsize=(9, 0.9 + 0.42 * len(rss)))
        fig.suptitle(f"(e) memory per idle authenticated connection ({_connections(idle)} connections; RSS, "
                     "lower is better)", fontsize=10, x=0.01, ha="left")
        _bars(ax, rss, "", "KB per connection",
              text=lambda v: f"{v / 1024:.1f} KB", scale=1 / 1024, limit=(16 * 1024, "target 16 KB"))
        save(fig, "memory")
    for name in DRAWN:
        if name not in results:
            continue
        rows = _cpu_rows(results[name])
        if not rows:
            continue
        group = _group(name)
        unit = _unit(results[name])
        fig, ax = plt.subplots(figsize=(9, 1.0 + 0.42 * len(rows)))
        _bars(ax, rows, "", f"server CPU per {unit} (lower is better); bars: medians, dots: rounds")
        fig.suptitle(group.heading(False), fontsize=10, x=0.01, ha="left")
        save(fig, name)
    return written


# -- the Markdown file that shows them ------------------------------------------------------


def embed(markdown: Path, charts: list[Path]) -> None:
    """Show `charts` in `markdown`: the overview and memory under "## Charts" (before the
    targets), each scenario's under its heading. Lines written before are replaced."""
    names = {p.stem: p.relative_to(markdown.parent).as_posix() for p in charts}
    lines = [line for line in markdown.read_text().split("\n") if not line.endswith(MARK)]
    out: list[str] = []
    headings = {_bare(_group(n).heading(False)): n for n in DRAWN}
    for line in lines:
        if line.startswith("## Targets") and ("overview" in names or "memory" in names):
            out += [f"## Charts {MARK}", MARK]
            for name, alt in (("overview", "server CPU per unit, per scenario"),
                              ("memory", "memory per idle connection")):
                if name in names:
                    out += [f"![{alt}]({names[name]}) {MARK}", MARK]
        out.append(line)
        name = headings.get(_bare(line[3:])) if line.startswith("## ") else None
        if name in names:
            out += [MARK, f"![{line[3:]}]({names[name]}) {MARK}"]
    markdown.write_text("\n".join(out))


def _bare(heading: str) -> str:
    """A heading without its scenario letters: "(a), (b) echo ..." -> "echo ..."."""
    return re.sub(r"^(\([a-z]\),? )+", "", heading.strip())


# -- JSON from a RESULTS.md (runs whose JSON was not kept) ----------------------------------


def from_markdown(text: str) -> dict[str, Any]:
    """The results JSON of a RESULTS.md, as far as its tables tell (see the module's doc)."""
    labels = {s.label: s.key for s in SERVERS.values()}
    headings = {_bare(g.heading(False)): g.name for g in GROUPS if g.name in DRAWN}
    results: Results = {}
    group: str | None = None
    head: list[str] = []
    for line in text.split("\n"):
        if line.startswith("## "):
            group, head = headings.get(_bare(line[3:])), []
            continue
        if group is None or not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not head:
            head = cells
            continue
        if cells[0] == "---" or cells[0] not in labels:
            continue
        row = dict(zip(head, cells))
        results.setdefault(group, {})[labels[cells[0]]] = _runs(row)
    meta = dict(re.findall(r"^\* (Date|Command|Code): (.*)$", text, re.M))
    return {"command": meta.get("Command", "").strip("`"), "started": meta.get("Date", ""),
            "code": meta.get("Code", ""),
            "recovered_from": "RESULTS.md: each round's server CPU per unit; other figures are the table's "
                              "medians, repeated in every round",
            "results": results}


def _runs(row: dict[str, str]) -> list[dict[str, Any]]:
    cpu_cell = row.get("server CPU/unit") or row.get("server CPU/upgrade") or row.get("server CPU/connection", "")
    unit = cpu_cell.partition("/")[2] or ("upgrade" if "server CPU/upgrade" in row else "connection")
    per_round = row.get("per round (server CPU/unit)")
    cpus = [_seconds(v) for v in per_round.split(", ")] if per_round else [_seconds(cpu_cell.partition("/")[0])]
    extra: dict[str, Any] = {"unit": unit}
    if "RSS/connection" in row:
        extra["rss_per_connection"] = float(row["RSS/connection"].split()[0]) * 1024
    return [{"server_cpu_per_unit": cpu, **extra} for cpu in cpus if cpu is not None]


def _seconds(text: str) -> float | None:
    match = re.fullmatch(r"([\d.,]+) (us|ms|s)", text.strip())
    if match is None:
        return None
    return float(match[1].replace(",", "")) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[match[2]]


def charts_folder(markdown: Path) -> Path:
    """bench/RESULTS.md -> bench/charts; any other X.md -> X-charts next to it."""
    return markdown.parent / ("charts" if markdown.name == "RESULTS.md" else markdown.stem + "-charts")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", type=Path, default=BENCH / "RESULTS.json",
                   help="a results JSON (default: bench/RESULTS.json)")
    p.add_argument("--from-markdown", type=Path, metavar="RESULTS.md",
                   help="first rebuild the JSON (next to the Markdown file) from its tables")
    p.add_argument("--markdown", type=Path, help="the file that shows the charts (default: the JSON's .md)")
    args = p.parse_args(argv)
    if args.from_markdown is not None:
        args.results = args.from_markdown.with_suffix(".json")
        args.results.write_text(json.dumps(from_markdown(args.from_markdown.read_text()), indent=1) + "\n")
        print(f"wrote {args.results}")
    markdown = args.markdown or args.results.with_suffix(".md")
    results = json.loads(args.results.read_text())["results"]
    written = draw(results, charts_folder(markdown))
    if markdown.exists():
        embed(markdown, written)
    print("wrote " + ", ".join(str(p) for p in written) + (f"; shown in {markdown}" if markdown.exists() else ""))


if __name__ == "__main__":
    main()
