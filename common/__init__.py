"""What the UI (`cockpit`) and the trainer process (`trainers`) share, and nothing else imports below it.

    common.events    the event protocol: every event type and its fields as typed structs (docs/events.md)
    common.reader    the one reader of event logs: whole, followed while growing, or head and tail only
    common.state     the one reducer: events -> RunState, and "fold the log, then decide whether it was killed"
    common.procs     is the trainer that writes a log still alive (psutil, any OS)
    common.paths     where runs live: runs/<name>-<timestamp>/events.jsonl, trainer.out
    common.fmt       numbers for people: bytes, counts, rates, durations, losses
    common.dotted    dotted keys: {"model": {"n_layer": 2}} <-> {"model.n_layer": 2}
    common.cli       the one argparse error hook: bad usage is one `cockpit: error:` line and exit 2

No torch, no Textual, no numpy: both sides import this at start-up.
"""
