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
# At most one line this often (frame time): a camera whose infrared filter flaps at dusk (light
# near its switching point, its own IR lamp lighting a wall) changes every 10 s, 360 lines an
# hour; the changes between two lines are counted in the next.
SAY_EVERY_S = 60.0


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
    returns), at most one line a SAY_EVERY_S: a change sooner waits, said with the count of
    changes since the last line, when it still holds; ``since`` is the frame time grey began,
    None while the pictures are in colour (at once, whatever the log said)."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self.since: float | None = None
        self._last_look: float | None = None
        self._run = 0  # looks in a row that disagree with the state
        self._first: float | None = None  # frame time of the first of them
        self._said_grey = False  # the state the log told last
        self._said_at: float | None = None  # frame time of that line
        self._said_since = 0.0  # the grey line's ``since`` (the minutes the colour line says)
        self._changed_at = 0.0  # frame time of the latest change (where those minutes end)
        self._changes = 0  # state changes since that line

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
        else:
            if self._run == 0:
                self._first = timestamp
            self._run += 1
            if self._run >= AGREE:
                self._run = 0
                self._changes += 1
                self.since = self._first if self.since is None else None
                self._changed_at = timestamp
        self._tell(timestamp)

    def _tell(self, timestamp: float) -> None:
        """Say the state if it is not what the log said last, once SAY_EVERY_S has passed."""
        if self.grey == self._said_grey or (
                self._said_at is not None and abs(timestamp - self._said_at) < SAY_EVERY_S):
            return
        often = (f" ({self._changes} changes between colour and grey since the last line: the "
                 "camera switches its infrared mode back and forth, see docs/install-pi.md, "
                 "night)" if self._changes > 1 else "")
        self._said_grey, self._said_at, self._changes = self.grey, timestamp, 0
        if self.since is not None:
            self._said_since = self.since
            log.warning("%s: the camera sends grey pictures (infrared night mode?): maskd finds "
                        "and judges faces much less well in them (docs/install-pi.md, night); "
                        "said again when colour comes back%s", self.camera, often)
        else:
            log.info("%s: colour pictures again, after %.0f min of grey ones%s", self.camera,
                     max(0.0, self._changed_at - self._said_since) / 60, often)
