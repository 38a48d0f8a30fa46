"""Does the camera send grey pictures? A door camera in infrared (night) mode does, and maskd
finds and judges faces much less well in them (docs/eval_video.md, "Night": walk-up recall 0.87
-> 0.65, masked people flagged 0.4 % -> 3.6 %). Nothing in the loop changes; the operator is told
when it begins and when colour comes back, so night alarms are read for what they are."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# The 99th percentile of a pixel's channel spread (max - min of B, G, R; 0..255) at or under which
# a picture is grey. Chosen before use on the dev walk-up clips (MJPG as the loop reads them):
# every colour frame looked at was >= 30, the same clips made grey 0; a grey picture's chroma
# noise from a camera's encoder stays a few levels.
GREY_SPREAD = 10.0
LOOK_EVERY_S = 5.0  # one look per 5 s of frame time: a few thousand pixels, no cost per frame
AGREE = 2  # looks in a row that must agree before the state changes (one dark or odd frame)


def channel_spread(image: np.ndarray, step: int = 8) -> float:
    """How far a picture is from grey: the 99th percentile, over every ``step``-th pixel, of
    the difference between its brightest and darkest channel (0 for a one-channel image)."""
    if image.ndim < 3 or image.shape[2] < 3:
        return 0.0
    px = image[::step, ::step, :3].astype(np.int16)
    return float(np.percentile(px.max(axis=2) - px.min(axis=2), 99))


def looks_grey(image: np.ndarray) -> bool:
    return channel_spread(image) <= GREY_SPREAD


class GreyWatch:
    """One camera's colour state: grey after AGREE grey looks in a row, colour again after
    AGREE colour ones. Says each change once (a WARNING when grey begins, an INFO when colour
    returns); ``since`` is the frame time grey began, None while the pictures are in colour."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self.since: float | None = None
        self._last_look: float | None = None
        self._run = 0  # looks in a row that disagree with the state
        self._first: float | None = None  # frame time of the first of them

    @property
    def grey(self) -> bool:
        """The camera sends grey pictures now."""
        return self.since is not None

    def look(self, image: np.ndarray, timestamp: float) -> None:
        """Look at ``image`` when LOOK_EVERY_S of frame time has passed (either way: a clock
        step back must not stop the looks)."""
        if self._last_look is not None and abs(timestamp - self._last_look) < LOOK_EVERY_S:
            return
        self._last_look = timestamp
        if looks_grey(image) == self.grey:
            self._run = 0
            return
        if self._run == 0:
            self._first = timestamp
        self._run += 1
        if self._run < AGREE:
            return
        self._run = 0
        if self.since is None:
            self.since = self._first
            log.warning("%s: the camera sends grey pictures (infrared night mode?): maskd finds "
                        "and judges faces much less well in them (docs/install-pi.md, night); "
                        "said again when colour comes back", self.camera)
        else:
            log.info("%s: colour pictures again, after %.0f min of grey ones", self.camera,
                     max(0.0, timestamp - self.since) / 60)
            self.since = None
