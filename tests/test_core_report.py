"""report.html shows each number once, with units; environment.json pins code and inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import attrs
from emverse.components import Component
from emverse.hookspecs import hookimpl
from emverse.interfaces import Task
from emverse.params import path_field
from emverse.run import RunResult, run_recipe


@attrs.frozen
class _ReportParams:
    table_file: str = path_field("file", default="")


class _ReportTask(Task):
    def __init__(self, table_file: str = ""):
        self.table_file = table_file

    def run(self, ctx):
        header, rows = ["parameter", "unit", "mean"], [["thickness", "Å", "412.5"], ["tilt", "mrad", "1.25"]]
        ctx.add_table("posterior", header, rows)
        ctx.add_text("posterior as text", "\n".join(" | ".join(r) for r in [header, *rows]))
        ctx.add_text("note", "a free text stays")
        return RunResult({"mean/thickness": 412.5, "mean/tilt": 1.25, "rmsd_angstrom": 0.031,
                          "wR": 0.2}, units={"wR": "1"})


class _ReportPlugin:
    @hookimpl
    def emverse_components(self):
        yield Component("task", "test.report", f"{__name__}:_ReportTask", f"{__name__}:_ReportParams")


def test_report_has_one_metrics_table_with_units_and_environment_pins_inputs(emverse_plugin, tmp_path):
    emverse_plugin(_ReportPlugin())
    data = tmp_path / "input.dat"
    data.write_text("1 2 3\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text('schema_version = 1\nname = "rep"\nseed = 1\ntask = "test.report"\n'
                      '[options]\ntable_file = "input.dat"\n')
    out = run_recipe(recipe, tmp_path / "run")
    html = (out / "report.html").read_text()
    assert "<th>unit</th>" in html
    assert "<td style='text-align:left'>rmsd_angstrom</td><td>0.031</td><td style='text-align:left'>Å</td>" in html
    assert "<td style='text-align:left'>wR</td><td>0.2</td><td style='text-align:left'>1</td>" in html
    assert "mean/thickness" not in html and "2 per-item metrics are shown in the tables below" in html
    assert "posterior as text" not in html and "a free text stays" in html
    assert json.loads((out / "metrics.json").read_text())["mean/thickness"] == 412.5  # all kept there
    env = json.loads((out / "environment.json").read_text())
    assert env["input_sha256"] == {"input.dat": hashlib.sha256(b"1 2 3\n").hexdigest()}
    assert env["recipe_source"] == str(recipe.resolve())
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        assert env["git_commit"] and len(env["git_commit"].split("+")[0]) == 40
