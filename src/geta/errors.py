"""Exceptions raised by geta. Each message names the problem and what to do about it."""


class GetaError(Exception):
    """Base class of every error geta raises on purpose."""


class ConfigError(GetaError, ValueError):
    """A setting is invalid (unknown mode, bad bit width or range, a skip entry that matches nothing)."""


class ModelError(GetaError, TypeError):
    """The model or its example inputs cannot be used (not a Module, inputs it cannot run)."""


class SavedModelError(GetaError, ValueError):
    """A saved model cannot be written or read back (tampered or truncated file, unknown layer type)."""
