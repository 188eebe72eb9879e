"""Exceptions raised by geta. Each message names the problem and what to do about it."""


def error_summary(error: BaseException) -> str:
    """``TypeName: first line of the message``: an exception as one line of a reason or an error."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"


class GetaError(Exception):
    """Base class of every error geta raises on purpose."""


class ConfigError(GetaError, ValueError):
    """A setting is invalid (unknown mode, bad bit width or range, a skip entry that matches nothing)."""


class ModelError(GetaError, TypeError):
    """The model or its example inputs cannot be used (not a Module, inputs it cannot run)."""


class SavedModelError(GetaError, ValueError):
    """A saved model cannot be written or read back (tampered or truncated file, unknown layer type)."""
