"""An example third-party detprune plugin (see plugin.py)."""
