"""The cockpit's widgets, one per file. Each draws from a RunState (or a few) through the pure functions
beside it in its module, testable without a terminal; chart_markers.py (the loss chart's markers) and
drawing.py (bars, sparklines, line packing shared by the panes) hold the logic that is not one widget's."""
