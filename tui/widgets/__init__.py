"""Reusable widgets: keyboard tables, the status line, highlighted replies."""
