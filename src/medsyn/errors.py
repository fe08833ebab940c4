"""Errors a user can act on.

Each exception's message names the file or key, says what was found, what was expected and
what to do. The CLI turns any :class:`MedsynError` into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


class MedsynError(Exception):
    """Base class of user-facing errors (bad input, bad config, bad checkpoint)."""


class DatasetError(MedsynError):
    """A dataset, subject or image file is missing, unreadable or inconsistent."""


class ConfigError(MedsynError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class GeometryError(MedsynError):
    """Images that must share a grid (shape, affine) do not."""


class CheckpointError(MedsynError):
    """A run folder or checkpoint is missing, corrupt or incompatible."""


class OutputError(MedsynError):
    """An output path exists already, is not writable, or the write failed."""


class MedsynWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints one line)."""


def labels_outside_mask_message(label_path: object, mask_name: str, n: int) -> str:
    """The one wording ``verify`` and ``train`` use for label voxels outside the mask."""
    return (f"{label_path}: {n} labelled voxels lie outside {mask_name}; they are kept in the label but never sampled "
            "as foreground (check the mask if the count is large)")
