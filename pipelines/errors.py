"""Errors raised when a dataset's files do not match its documented layout."""

from __future__ import annotations


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is wrong, an index file is missing, or an index file is malformed.

    The message always names the file that was expected and shows the dataset's layout, so the
    fix (point ``root`` at the right folder, or unpack the archive) is obvious.
    """

    def __init__(self, dataset: str, problem: str, layout: str):
        self.dataset = dataset
        self.problem = problem
        self.layout = layout
        super().__init__(f"{dataset}: {problem}\nExpected layout:\n{layout}")


class UnknownDatasetError(KeyError):
    """``load_dataset`` was given a name no reader is registered under."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])
