"""Full-resolution source frames of a portrait video by index, a few at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ldm.video import PathLike, VideoError, iter_frames, probe

WINDOW = 16  # frames held at once (about 100 MB at 1080 x 1920)


class SourceFrames:
    """(H, W, 3) uint8 frames of a video at a constant ``fps`` by 0-based index, holding at
    most ``window`` of them. Requests that move forward read on through one decoder; a request
    behind the window (the way back of a ping-pong) decodes the ``window`` frames ending at it
    again, from the start of the file, so every index gives the same frame whatever came before.
    """

    def __init__(self, path: PathLike, n_frames: int, fps: float, window: int = WINDOW) -> None:
        self.path, self.n_frames, self.fps, self.window = Path(path), n_frames, fps, window
        self.info = probe(path)
        self._first, self._frames = 0, []  # the window: frames _first .. _first + len - 1
        self._decoder: Iterator[np.ndarray] | None = None
        self._next = 0  # index the open decoder yields next

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.n_frames:
            raise IndexError(f"{self.path}: frame {index} of {self.n_frames}")
        if not self._first <= index < self._first + len(self._frames):
            self._load(index)
        return self._frames[index - self._first]

    def _load(self, index: int) -> None:
        """Fill the window with frames up to ``window`` from ``index`` on, or ending at it."""
        start = max(0, index - self.window + 1) if index < self._first else index
        if self._decoder is None or start < self._next:
            if self._decoder is not None:
                self._decoder.close()
            self._decoder = iter_frames(self.path, self.fps, info=self.info, start=start)
            self._next = start
        self._frames = []
        for frame in self._decoder:
            self._next += 1
            if self._next > start:
                self._frames.append(frame)
            if len(self._frames) == min(self.window, self.n_frames - start):
                break
        self._first = start
        if not self._first <= index < self._first + len(self._frames):
            raise VideoError(
                f"{self.path}: the video ends after {self._next} frames at {self.fps:g} fps, "
                f"but its preprocessing found {self.n_frames}"
            )
