"""Errors shared by every layer."""


class DataError(ValueError):
    """A record of a data file is unusable. The message names the file, the record and the field."""
