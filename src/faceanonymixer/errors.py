"""Errors a user can hit. Each message names the item and says what to do."""


class FaceAnonyMixerError(Exception):
    """Base class: everything the CLI reports as a user error (no traceback)."""


class MissingWeightsError(FaceAnonyMixerError):
    """A model file is absent from every place it was looked for."""


class CorruptWeightsError(FaceAnonyMixerError):
    """A model file exists but its hash or layout is wrong."""


class CheckpointFormatError(FaceAnonyMixerError):
    """A checkpoint does not match the architecture it is loaded into, or is unsafe/unreadable."""


class ImageError(FaceAnonyMixerError):
    """An input file is not a usable image."""


class NoFaceError(ImageError):
    """No face was found in an image."""


class SeveralFacesError(ImageError):
    """Several faces of similar size: which person is meant is ambiguous."""


class KeyFileError(FaceAnonyMixerError):
    """A key file is missing, unreadable or malformed."""
