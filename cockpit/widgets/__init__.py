"""The cockpit's widgets, one per file. Each draws from a RunState (or a few) through cockpit.tui_logic."""
