"""Is the portrait someone the model was trained on? A single-speaker model asked to drive another
face draws a blurred or wrong mouth; portrait mode and the web app say so before rendering.

The portrait's dlib face descriptor (its reference frame, at full resolution) is compared with
the training identities its checkpoint records (ldm/preprocessing/identity.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ldm.preprocessing.identity import SAME_PERSON_DISTANCE, Identities, face_describer

logger = logging.getLogger(__name__)

MANY_SPEAKERS = 5  # a model trained on this many persons or more is meant for new faces
TRAIN_HINT = "sh demo.sh clip_of_this_person.mp4 [more clips of this person ...]"


@dataclass
class IdentityCheck:
    """The outcome of comparing a portrait with a model's training identities."""

    checked: bool  # False: nothing to compare (no record in the checkpoint, or no face)
    matched: bool | None = None  # the portrait is one of the training persons
    distance: float | None = None  # to the nearest training face
    n_persons: int | None = None  # persons the model was trained on
    warn: bool = False  # a model of few speakers asked to drive someone else
    message: str = ""

    def log(self) -> None:
        """The message as a WARNING when ``warn``, else as an INFO line."""
        (logger.warning if self.warn else logger.info)("%s", self.message)


def persons(n: int) -> str:
    """'1 person', '3 persons'."""
    return f"{n} person" + ("" if n == 1 else "s")


def warning_text(n_persons: int, distance: float) -> str:
    """The warning for a model of few speakers driving a face it was not trained on."""
    kind = "a single-speaker model" if n_persons == 1 else f"a model of {persons(n_persons)}"
    return (
        f"this model was trained on {persons(n_persons)} and the portrait is someone else "
        f"(face distance {distance:.2f} > {SAME_PERSON_DISTANCE}): {kind} draws a blurred or "
        f"wrong mouth on other faces; use a many-speaker model (trained on {MANY_SPEAKERS} or "
        f"more persons) or train one on this person: {TRAIN_HINT}"
    )


def check_identity(identities: Identities | None, descriptor: np.ndarray | None) -> IdentityCheck:
    """Compare a portrait's descriptor (128,) with a model's training identities."""
    if identities is None:
        return IdentityCheck(
            False, message="the checkpoint records no training identities: portrait not checked"
        )
    if len(identities.videos) == 0:
        return IdentityCheck(
            False,
            message="the model's training frames had no face dlib could describe: "
            "portrait not checked",
        )
    n = identities.n_persons
    if descriptor is None:
        return IdentityCheck(
            False, n_persons=n, message="no face descriptor of the portrait: not checked"
        )
    distance, video = identities.nearest(descriptor)
    matched = distance < SAME_PERSON_DISTANCE
    if matched:
        message = (
            f"the portrait is a person the model was trained on (face distance {distance:.2f} "
            f"< {SAME_PERSON_DISTANCE} to training video {video}; {persons(n)} in training)"
        )
        return IdentityCheck(True, True, distance, n, False, message)
    if n >= MANY_SPEAKERS:
        message = (
            f"the portrait is a new face for this model of {persons(n)} (nearest face distance "
            f"{distance:.2f}): zero-shot"
        )
        return IdentityCheck(True, False, distance, n, False, message)
    return IdentityCheck(True, False, distance, n, True, warning_text(n, distance))


def portrait_descriptor(frame: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray | None:
    """(128,) descriptor of the portrait's face in ``frame`` (H, W, 3) uint8 RGB at
    ``landmarks`` (68, 2) frame pixels (None: detected)."""
    return face_describer().describe(frame, landmarks)


def check_portrait(
    identities: Identities | None, frame: np.ndarray, landmarks: np.ndarray | None = None
) -> IdentityCheck:
    """Check the face of a portrait frame against ``identities`` and log the outcome (a WARNING
    when a model of few speakers is asked to drive someone else)."""
    descriptor = None
    if identities is not None and len(identities.videos):  # no descriptor needed otherwise
        descriptor = portrait_descriptor(frame, landmarks)
    check = check_identity(identities, descriptor)
    check.log()
    return check
