"""Error types that carry where bad input came from (file, record, field)."""


class GeniesError(Exception):
    """Base class for user-facing errors: the message says what, where and what to do."""


class DataError(GeniesError):
    """A dataset or shift file violates the GENIES format."""

    def __init__(self, path, message, record=None, field=None):
        self.path = str(path)
        self.message = message
        self.record = record
        self.field = field
        where = self.path
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ConfigError(GeniesError):
    """The workflow configuration is invalid."""


def rebuild_advice(path, rule: str | None = None) -> str:
    """How to rebuild a file the workflow wrote: deleting it makes the next run rebuild only
    it (and what depends on it); `--forcerun` rebuilds every file of its rule."""
    advice = f"delete {path} and run again to rebuild it"
    return advice + (f" (or rebuild with `--forcerun {rule}`)" if rule else "")


class CorruptFileError(GeniesError, ValueError):
    """A file the workflow wrote cannot be read (truncated, overwritten, not its format)."""

    def __init__(self, path, problem, rule: str | None = None):
        self.path = str(path)
        super().__init__(f"{path}: {problem}; {rebuild_advice(path, rule)}")
