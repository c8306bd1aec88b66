"""Exceptions of the export step; the CLI maps them to exit codes."""


class ExportError(Exception):
    """Base class; the message is one line naming the thing and the problem."""


class InputError(ExportError):
    """Bad input (wav, folder, seed files, output dir): exit code 2."""


class ParityError(ExportError):
    """The ONNX graph does not reproduce the Keras scores: exit code 1."""
