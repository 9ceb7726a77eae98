"""Errors that the CLI turns into one clear line and a non-zero exit (never a traceback)."""


class StfEvalError(Exception):
    """Base class: the message is meant for the user, on one line."""

    exit_code = 1


class ConfigError(StfEvalError):
    """Bad suite file or override: unknown key, wrong type, value out of range."""

    exit_code = 2


class UnknownPluginError(ConfigError):
    """A model, suite, dataset or net name that no plugin registers."""


class DataError(StfEvalError):
    """Missing dataset files, NaN inputs, shapes that do not fit."""

    exit_code = 2


class TrainingDiverged(StfEvalError):
    """A training stage's loss or weights became NaN or infinite (usually: learning rate too large)."""

    exit_code = 2


class InternalError(StfEvalError):
    """A bug (not bad input) inside a cell: reported on one line, exit 1; -v shows the traceback."""

    exit_code = 1
