"""Errors detprune raises on purpose.

Every error a user can cause (a bad plugin name, a malformed annotation line, a tampered recipe)
derives from :class:`DetpruneError`, so the CLI can print its message alone, without a traceback.
"""

from __future__ import annotations


class DetpruneError(Exception):
    """Base class: a problem with the user's input or environment, explained by its message."""


class PluginError(DetpruneError):
    """A plugin could not be found, loaded or used."""


class UnknownPluginError(PluginError, LookupError):
    """No plugin of the asked kind has that name."""


class PluginConflictError(PluginError):
    """Two plugins offer the same name for the same kind."""


class BrokenPluginError(PluginError):
    """A plugin failed to import, or raised inside one of its hooks."""


class DataFormatError(DetpruneError, ValueError):
    """An input file does not follow its format; the message names file, line and field."""


class GraphError(DetpruneError):
    """The channel-dependency engine could not follow or prune a model."""


class RecipeError(DetpruneError):
    """A saved pruning recipe does not fit the model it should rebuild."""
