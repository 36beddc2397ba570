"""One exception family. Library code raises these; only ``cli.py`` turns them into a message and an exit code.

``exit_code`` 2 means the user asked for something malformed (a usage error); 1 means the request was
well-formed but failed while running.
"""

from __future__ import annotations


class InvertkitError(Exception):
    """Base of every error invertkit raises on purpose."""

    exit_code = 1


class UsageError(InvertkitError):
    """The request itself is wrong: unknown names, invalid option values, malformed files."""

    exit_code = 2


class UnknownNameError(UsageError, LookupError):
    """A plugin or registry.toml name that does not exist; the message suggests the nearest one."""


class DuplicateNameError(InvertkitError):
    """Two plugins register the same name for the same kind."""


class ConfigError(UsageError):
    """A configuration value failed validation; the message names the field."""


class RegistryFileError(UsageError):
    """``registry.toml`` (or a user's registry file) is malformed."""


class CapabilityError(InvertkitError):
    """An attacker asked a target for something outside its capability set."""


class QueryBudgetExceeded(InvertkitError):
    """A query would take a target past its query budget; nothing was answered."""


class CheckpointError(InvertkitError):
    """A weights file or ONNX model is missing, malformed or does not fit the architecture."""


class ShapeError(InvertkitError):
    """An input does not have the shape the target expects."""


class NonFiniteError(InvertkitError):
    """A model or an attack produced NaN or infinite values."""


class DataNotFoundError(InvertkitError):
    """A dataset (or pretrained file) is not where it should be; the message says where to put it."""


class PluginError(InvertkitError):
    """A plugin failed to load or to register."""
