"""cockpit: a terminal training cockpit. Importing this package imports neither torch nor Textual."""

__version__ = "0.1.0"
