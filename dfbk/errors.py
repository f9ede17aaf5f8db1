"""Error types the CLI turns into one clear line instead of a traceback."""


class DfbkError(Exception):
    """Base class: bad input, bad config or a broken run; the message names the file or key."""


class ConfigError(DfbkError):
    """A config key or value is wrong (unknown key, unknown method, impossible direction)."""


class DataError(DfbkError):
    """An input volume or store is missing, corrupt or inconsistent."""


class TrainingError(DfbkError):
    """Training cannot go on (NaN/Inf loss, incompatible checkpoint)."""
