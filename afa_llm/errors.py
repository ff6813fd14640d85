"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (file, column, label, config key, model name...).

    The CLI catches it, prints ``error: <message>`` on stderr, and exits 2 with no
    traceback. Anything else is a bug and keeps its traceback.
    """


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the last good checkpoint is kept."""
