"""The Grafana dashboard's panels, plotted from a running Prometheus into a PNG.

Grafana cannot be installed everywhere (not on this project's development machines), so
this reads the dashboard JSON (deploy/grafana/dashboards/masklam.json), runs each
panel's PromQL as a range query over the last minutes through Prometheus's HTTP API, and
draws the panels in the dashboard's own grid layout with matplotlib: the picture of the
dashboard in the README.

    .venv/bin/python scripts/dashboard_png.py [--prometheus http://127.0.0.1:9090]
        [--minutes 30] [--out docs/dashboard.png]
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, Formatter, PercentFormatter, ScalarFormatter  # noqa: E402

from common.cli import run_main  # noqa: E402
from common.config import parse  # noqa: E402

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "masklam.json"
GRID_COLUMNS = 24  # Grafana's grid
MAX_LEGEND_ENTRIES = 6
TITLE_HEIGHT = 2  # grid units above the first row for the figure's title
POINTS = 240  # per series: the range query's step is the window divided by this


@dataclass
class Series:
    label: str
    times: list[datetime]
    values: list[float]


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """The `result` of /api/v1/query_range; raises with Prometheus's message on a bad query."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:  # 400/422 carry Prometheus's explanation
        body = json.load(error)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error', body)}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    if not template:
        return json.dumps(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match[1], ""), template)


def fetch(dashboard: dict, prometheus: str, start: float, end: float) -> dict[int, list[Series]]:
    """Every panel's series from `start` to `end` (Unix times), keyed by panel id."""
    step = max(1.0, (end - start) / POINTS)
    panels: dict[int, list[Series]] = {}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        panels[panel["id"]] = [
            Series(legend(target.get("legendFormat", ""), result["metric"]),
                   [datetime.fromtimestamp(t) for t, _ in result["values"]],
                   [float(v) for _, v in result["values"]])
            for target in panel["targets"]
            for result in query_range(prometheus, target["expr"], start, end, step)]
    return panels


def _formatter(unit: str) -> Formatter:
    return {"s": EngFormatter(unit="s"), "bytes": EngFormatter(unit="B"),
            "percentunit": PercentFormatter(1.0)}.get(unit) or ScalarFormatter(useOffset=False)


def draw(dashboard: dict, panels: dict[int, list[Series]], start: float, end: float, out: Path) -> None:
    """Lay the panels out as Grafana's grid does (x, y, w, h in grid units) and save a PNG."""
    window = (datetime.fromtimestamp(start), datetime.fromtimestamp(end))
    height = TITLE_HEIGHT + max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = plt.figure(figsize=(18, height * 0.28))
    fig.text(0.01, 1 - 1.2 / height, f"{dashboard['title']}: {window[0]:%Y-%m-%d %H:%M} to {window[1]:%H:%M}",
             fontsize=15, weight="bold")
    for panel in dashboard["panels"]:
        x, y, w, h = (panel["gridPos"][k] for k in ("x", "y", "w", "h"))
        y += TITLE_HEIGHT
        if panel["type"] == "row":
            fig.text(0.01, 1 - (y + 0.8) / height, panel["title"], fontsize=13, weight="bold")
            continue
        # Figure fractions, leaving room for the tick labels left and below and the title above.
        ax = fig.add_axes((x / GRID_COLUMNS + 0.035, (height - y - h + 0.9) / height,
                           w / GRID_COLUMNS - 0.05, (h - 2.1) / height))
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.yaxis.set_major_formatter(_formatter(panel["fieldConfig"]["defaults"].get("unit", "short")))
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator(), show_offset=False))
        ax.set_xlim(*window)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        series = panels.get(panel["id"], [])
        for s in series:
            ax.plot(s.times, s.values, label=s.label, linewidth=1.2)
        if not series:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_yticks([])
        elif len(series) <= MAX_LEGEND_ENTRIES:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.6)
        else:
            ax.text(0.01, 0.97, f"{len(series)} series", transform=ax.transAxes, fontsize=7, va="top")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


@dataclass
class DashboardPngConfig:
    """The Grafana dashboard's panels, plotted from a running Prometheus into a PNG."""

    prometheus: str = field(default="http://127.0.0.1:9090", metadata={"help": "Prometheus base URL"})
    minutes: float = field(default=30.0, metadata={"help": "time window to plot, ending now"})
    dashboard: Path = field(default=DASHBOARD, metadata={"help": "Grafana dashboard JSON"})
    out: Path = field(default=Path("docs/dashboard.png"), metadata={"help": "PNG to write"})


def main(argv: list[str] | None = None) -> int:
    args = parse(DashboardPngConfig, argv, "scripts/dashboard_png.py")
    dashboard = json.loads(args.dashboard.read_text())
    end = time.time()
    start = end - args.minutes * 60
    try:
        panels = fetch(dashboard, args.prometheus.rstrip("/"), start, end)
    except urllib.error.URLError as error:
        print(f"dashboard_png: cannot reach Prometheus at {args.prometheus} ({error.reason}); "
              "start it with `make monitor`", file=sys.stderr)
        return 1
    draw(dashboard, panels, start, end, args.out)
    drawn = sum(bool(series) for series in panels.values())
    print(f"dashboard_png: wrote {args.out} ({drawn} of {len(panels)} panels with data)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
