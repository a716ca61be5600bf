"""`cockpit runs [--json] [--dir DIR] [--sort KEY] [--reverse] [--filter QUERY]`

    --json    one JSON object per run (newest first), for scripts; never needs a terminal
    (none)    on a terminal: the TUI runs browser; without one: the same list as a text table

The runs directory is DIR, else $COCKPIT_RUNS, else ./runs (common.paths.runs_root).
"""
from __future__ import annotations

import inspect
import json
import sys

from cockpit.runs import RunsError
from cockpit.runs.index import index_runs
from cockpit.runs.query import SORT_KEYS, filter_runs, sort_runs
from cockpit.runs.table import runs_table
from common.cli import BadInput, Parser, fail
from common.paths import runs_root


def build_parser() -> Parser:
    p = Parser(prog="cockpit runs", description="List the runs under a runs directory.")
    add_arguments(p)
    return p


def add_arguments(p: Parser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per run, for scripts")
    p.add_argument("--dir", help="runs directory (default: $COCKPIT_RUNS or ./runs)")
    p.add_argument("--sort", default="started", metavar="KEY",
                   help=f"sort by one of: {', '.join(SORT_KEYS)} (default: started, newest first)")
    p.add_argument("--reverse", action="store_true", help="reverse the sort order")
    p.add_argument("--filter", default="", metavar="QUERY",
                   help="keep runs matching every term: word, field:text, field<n, field>=n (e.g. "
                        "'status:killed', 'best_val<2', 'model.n_layer:4')")


def _tui_runs():
    """cockpit.app.run_tui if it takes `runs=`, else None (the browser is not built yet)."""
    try:
        from cockpit.app import run_tui
    except ImportError:
        return None
    try:
        params = inspect.signature(run_tui).parameters
    except (TypeError, ValueError):
        return None
    if "runs" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return run_tui
    return None


def main(argv: list[str] | None = None, parser: Parser | None = None) -> int:
    """`cockpit runs ARGS`; `parser` is the `cockpit runs` subparser when the cockpit CLI calls."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), parser or build_parser())
    except BadInput as e:  # RunsError too
        return fail(str(e))


def _main(argv: list[str], parser: Parser) -> int:
    a = parser.parse_args(argv)
    root = runs_root(a.dir)
    if a.dir and not root.is_dir():
        raise RunsError(f"--dir {a.dir}: no such directory; pass the directory that holds your run folders")
    if a.sort not in SORT_KEYS:
        raise RunsError(f"--sort {a.sort}: unknown column; use one of {', '.join(SORT_KEYS)}")
    shaped = a.filter or a.sort != "started" or a.reverse   # a list asked for: print it
    if not a.json and not shaped and sys.stdin.isatty() and sys.stdout.isatty():
        run_tui = _tui_runs()
        if run_tui is not None:
            return run_tui(runs=str(root))
    runs = index_runs(root)
    if a.filter:
        runs = filter_runs(runs, a.filter)
    if a.sort != "started" or a.reverse:
        runs = sort_runs(runs, a.sort, reverse=(a.sort == "started") != a.reverse)
    if a.json:
        for r in runs:
            sys.stdout.write(json.dumps(r.to_json(), default=str) + "\n")
        return 0
    if not runs:
        where = "matching " + repr(a.filter) + " " if a.filter else ""
        print(f"no runs {where}under {root}/ (start one with `cockpit train PRESET`)", file=sys.stderr)
        return 0
    print(runs_table(runs))
    return 0
