"""detprune's built-in plugins, installed as ``detprune_plugins``.

Each module is one plugin, declared in detprune's ``[project.entry-points.detprune]`` exactly as a
third-party plugin declares its own.
"""
