"""The errors lorakit raises for a user's mistakes: the CLI prints them on one line and exits with status 2."""


class LorakitError(Exception):
    """Something the user can fix: the message says what, where, and how."""


class ConfigError(LorakitError):
    """A bad config key or value, an unknown model, template or option name."""


class DataError(LorakitError):
    """A dataset that cannot be read or used: names the file, the record or line, and the field."""
