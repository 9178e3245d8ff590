"""Errors of the fine-tuning stage, in the :class:`~sparsec.errors.SparsecError` hierarchy."""

from __future__ import annotations

from sparsec.errors import SparsecError, UsageError


class DatasetError(UsageError):
    """A dataset is missing, unreadable, or does not fit the model."""


class TrainingError(SparsecError):
    """Training stopped: the loss became NaN/inf or diverged."""


class Interrupted(SparsecError):
    """Ctrl-C during training; a checkpoint was saved first."""

    exit_code = 130
