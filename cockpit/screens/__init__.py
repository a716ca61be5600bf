"""The cockpit's screens, one per file; pacing.py decides how often a run screen reads its log and redraws."""
