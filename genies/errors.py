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
