"""The cockpit's screens, one per file."""
