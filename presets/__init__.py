"""Shipped presets: one YAML file per preset (package data)."""
