"""The ``emverse`` command line.

``emverse plugins`` · ``emverse recipe validate FILE|NAME`` · ``emverse recipe show NAME``
· ``emverse recipe list`` · ``emverse run FILE|NAME [--set k=v] [--out DIR] [--force]`` ·
``emverse run --resume RUN_DIR`` · ``emverse status RUN_DIR`` · ``emverse report RUN_DIR``. Plugins add subcommands through the ``emverse_cli`` hook.

Errors a user can fix print one line and exit with code 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from emverse import __version__
from emverse.errors import EmverseError, RecipeError, RunInterrupted


def _cmd_plugins(args) -> int:
    from emverse.registry import get_registry

    registry = get_registry()
    if args.json:
        out = [
            {"name": p.name, "distribution": p.distribution, "version": p.version,
             "status": "disabled" if p.disabled else ("failed" if p.error else "ok"),
             "error": p.error, "components": p.components,
             "clashes": [c.message() for c in registry.clashes.values() if p.name in c.plugins]}
            for p in registry.plugins
        ]
        print(json.dumps(out, indent=2))
    else:
        for p in registry.plugins:
            state = "disabled" if p.disabled else ("FAILED" if p.error else "ok")
            print(f"{p.name}  ({p.distribution} {p.version})  [{state}]")
            if p.error:
                print(f"    error: {p.error}")
            for comp in registry.components():
                if f"{comp.kind}:{comp.name}" in p.components and comp.distribution == p.distribution:
                    print(f"    {comp.kind:<14} {comp.name:<32} {comp.summary}")
        for clash in registry.clashes.values():
            print(f"CLASH: {clash.message()}")
    return 1 if (registry.failures or registry.clashes) and registry.strict else 0


def _cmd_validate(args) -> int:
    from emverse.ready_recipes import recipe_path
    from emverse.recipe import load_recipe

    recipe = load_recipe(recipe_path(args.file), args.set)
    n = len(recipe.components)
    print(f"{args.file}: ok (task {recipe.task.type}, {n} component table{'s' if n != 1 else ''})")
    return 0


def _cmd_show(args) -> int:
    from emverse.ready_recipes import find_recipe

    sys.stdout.write(find_recipe(args.name).read_text(encoding="utf-8"))
    return 0


def _cmd_list(args) -> int:
    from emverse.ready_recipes import list_recipes

    for name in sorted(list_recipes()):
        print(name)
    return 0


def _cmd_run(args) -> int:
    if args.scheduler:
        os.environ["EMVERSE_DASK_SCHEDULER"] = args.scheduler
    from emverse.run import execute, resume_run

    progress = not args.no_progress
    if args.resume:
        if args.file or args.set or args.out or args.force:
            raise EmverseError("--resume RUN_DIR takes the recipe stored in RUN_DIR; "
                               "drop the recipe, --set, --out and --force")
        out = resume_run(args.resume, progress=progress)
    else:
        if not args.file:
            raise EmverseError("give a recipe file or ready recipe name (`emverse recipe list`), "
                               "or --resume RUN_DIR")
        from emverse.ready_recipes import recipe_path
        from emverse.recipe import load_recipe

        recipe = load_recipe(recipe_path(args.file), args.set)
        out = execute(recipe, Path(args.out) if args.out else None, progress=progress, force=args.force)
    metrics = json.loads((out / "metrics.json").read_text())
    for key, value in sorted(metrics.items()):
        print(f"{key:<40} {value:.6g}")
    print(f"run directory: {out}")
    print(f"report: {out / 'report.html'}")
    return 0


def _run_dir_arg(text: str) -> Path:
    run_dir = Path(text)
    if not (run_dir / "status.json").exists():
        raise EmverseError(f"{str(run_dir)!r} is not an emverse run directory (no status.json); "
                           "give the folder `emverse run` printed")
    return run_dir


def _cmd_report(args) -> int:
    from emverse.report import write_report

    print(write_report(_run_dir_arg(args.run_dir)))
    return 0


def _cmd_status(args) -> int:
    """Print the state of a run; exit 0 when complete, 3 when running, 1 otherwise."""
    from emverse.runstate import read_status

    state = read_status(_run_dir_arg(args.run_dir))
    line = f"{args.run_dir}: {state.get('status', 'unknown')}"
    if state.get("status") == "running":
        line += f" (process {state.get('pid')} on {state.get('host')}, heartbeat {state.get('heartbeat')})"
    detail = state.get("reason") or state.get("error")
    if detail:
        line += f": {detail}"
    if state.get("status") in ("dead", "interrupted", "failed"):
        line += f"; continue with `emverse run --resume {args.run_dir}` or start afresh with --force"
    print(line)
    return {"complete": 0, "running": 3}.get(state.get("status"), 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emverse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"emverse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list plugins, their components and failures")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)

    recipe = sub.add_parser("recipe", help="validate, show or list recipes").add_subparsers(
        dest="recipe_command", required=True)
    p = recipe.add_parser("validate", help="check a recipe without running it")
    p.add_argument("file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_validate)
    p = recipe.add_parser("show", help="print a ready recipe")
    p.add_argument("name")
    p.set_defaults(func=_cmd_show)
    p = recipe.add_parser("list", help="list ready recipes")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run a recipe into a run directory")
    p.add_argument("file", nargs="?", help="a recipe file or the name of a ready recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set sampler.steps=50")
    p.add_argument("--out", help="run directory (default runs/<name>-<UTC time>-<random>)")
    p.add_argument("--force", action="store_true", help="replace an existing run directory --out")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted or dead run in RUN_DIR with its stored recipe")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler for simulation campaigns, e.g. tcp://host:8786 "
                        "(default: an embedded local cluster)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="(re)write report.html of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("status", help="is a run complete, running, interrupted, failed or dead?")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        from emverse.registry import get_registry

        registry = get_registry()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        registry.manager.hook.emverse_cli(subparsers=sub)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if debug:
            raise
        return 2
    except EmverseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if debug:
            raise
        return 2
    except (KeyboardInterrupt, RunInterrupted) as exc:
        name = getattr(exc, "signal_name", "SIGINT")
        print(f"interrupted by {name}", file=sys.stderr)
        return 143 if name == "SIGTERM" else 130
    except Exception as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
