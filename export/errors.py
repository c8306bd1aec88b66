"""Exceptions of the export step and the exit codes the CLI maps them to."""

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


class ExportError(Exception):
    """Base class; the message is one line naming the thing and the problem."""


class InputError(ExportError):
    """Bad input (wav, folder, seed files, output dir): exit code 2."""


class ParityError(ExportError):
    """The ONNX graph does not reproduce the Keras scores: exit code 1."""
