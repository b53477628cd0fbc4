"""A self-contained ``report.html`` for a run directory (figures embedded as PNG data).

Each number appears once: one metrics table (with units from ``units.json`` or the
metric's name suffix), where per-item metrics ``group/item`` whose item is a row of a
task table are left to that table, and a text that only repeats a table is left out.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from emverse.io import write_text


def _load(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


#: metric-name suffixes that carry a unit
_SUFFIX_UNITS = (("_angstrom2", "Å²"), ("_angstrom", "Å"), ("_inv_angstrom", "Å⁻¹"), ("_mrad", "mrad"),
                 ("_kv", "kV"), ("_seconds", "s"), ("_percent", "%"), ("_deg", "°"), ("_nm", "nm"))


def metric_unit(name: str, units: dict) -> str:
    if name in units:
        return units[name]
    return next((unit for suffix, unit in _SUFFIX_UNITS if name.lower().endswith(suffix)), "")


def _cells(table: dict) -> set[str]:
    return {str(c).strip() for row in [table["header"], *table["rows"]] for c in row if str(c).strip()}


def _repeats_a_table(text: str, tables: dict) -> bool:
    """A text laid out as a table (``a | b | c`` lines) whose cells are exactly a table's."""
    cells = {c.strip() for line in text.splitlines() for c in line.split("|") if c.strip()}
    return bool(cells) and any(cells == _cells(t) for t in tables.values())


def _in_a_table(name: str, tables: dict) -> bool:
    group, sep, item = name.rpartition("/")
    return bool(sep) and any(row and str(row[0]) == item for t in tables.values() for row in t["rows"])


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    from emverse.runstate import read_status

    status = read_status(run_dir)
    metrics = _load(run_dir / "metrics.json", None)
    tables = _load(run_dir / "tables.json", {})
    texts = _load(run_dir / "texts.json", {})
    env = _load(run_dir / "environment.json", {})
    units = _load(run_dir / "units.json", {})
    recipe = (run_dir / "recipe.toml").read_text() if (run_dir / "recipe.toml").exists() else ""
    log_tail = ""
    if (run_dir / "run.log").exists():
        log_tail = "\n".join((run_dir / "run.log").read_text(errors="replace").splitlines()[-40:])

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>emverse run {html.escape(run_dir.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
        "text-align:right}th{background:#eee}pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
        ".bad{color:#b00}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}</style></head><body>",
        f"<h1>Run {html.escape(run_dir.name)}</h1>",
    ]
    state = status.get("status", "unknown")
    cls = "" if state == "complete" else " class='bad'"
    parts.append(f"<p{cls}>Status: <b>{html.escape(state)}</b>"
                 + (f" — {html.escape(status.get('error') or status.get('reason', ''))}"
                    if status.get("error") or status.get("reason") else "")
                 + (f" ({status['seconds']} s)" if "seconds" in status else "") + "</p>")
    parts.append("<h2>Metrics</h2>")
    if metrics:
        shown = {k: v for k, v in metrics.items() if not _in_a_table(k, tables)}
        parts.append("<table><tr><th>metric</th><th>value</th><th>unit</th></tr>")
        parts += [f"<tr><td style='text-align:left'>{html.escape(k)}</td><td>{_fmt(v)}</td>"
                  f"<td style='text-align:left'>{html.escape(metric_unit(k, units))}</td></tr>"
                  for k, v in sorted(shown.items())]
        parts.append("</table>")
        if len(shown) < len(metrics):
            parts.append(f"<p>{len(metrics) - len(shown)} per-item metrics are shown in the tables below "
                         "(all are in metrics.json).</p>")
    else:
        parts.append("<p class='bad'>No metrics: the run did not finish.</p>")
    for name, table in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(str(h))}</th>" for h in table["header"]) + "</tr>")
        for row in table["rows"]:
            parts.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for name, text in texts.items():
        if _repeats_a_table(text, tables):
            continue
        parts.append(f"<h2>{html.escape(name)}</h2><pre>{html.escape(text)}</pre>")
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").exists() else []
    if figures:
        parts.append("<h2>Figures</h2>")
        for fig in figures:
            data = base64.b64encode(fig.read_bytes()).decode("ascii")
            parts.append(f"<h3>{html.escape(fig.stem)}</h3><img alt='{html.escape(fig.stem)}' "
                         f"src='data:image/png;base64,{data}'>")
    parts.append(f"<h2>Recipe (resolved)</h2><pre>{html.escape(recipe)}</pre>")
    parts.append(f"<h2>Environment</h2><pre>{html.escape(json.dumps(env, indent=2))}</pre>")
    if log_tail:
        parts.append(f"<h2>Log (last lines)</h2><pre>{html.escape(log_tail)}</pre>")
    parts.append("</body></html>")
    return write_text(run_dir / "report.html", "\n".join(parts))
