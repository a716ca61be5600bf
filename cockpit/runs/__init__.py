"""The runs under a runs directory, from their event logs alone (no database to go stale).

    cockpit.runs.index    RunInfo per run: folds what it needs of each log with the shared reader and reducer
    cockpit.runs.query    sorting and the filter language of the browser and `cockpit runs --filter`
    cockpit.runs.table    a run as text cells, and the plain-text table of `cockpit runs`
    cockpit.runs.delete   removing one run directory, safely

No torch, no Textual.
"""
from common.cli import BadInput


class RunsError(BadInput, ValueError):
    """A refused runs operation (bad directory, unsafe delete, unknown column). str(e) is one line naming the
    fix."""
