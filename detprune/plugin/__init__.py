"""The plugin layer: hook specs, the host that loads plugins, the base classes plugins extend and the
context they receive (docs/plugin-guide.md is the author's guide)."""
