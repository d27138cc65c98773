"""The pytest side of etrm: plugin (options, markers, verdict table) and helpers."""
