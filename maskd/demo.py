"""The quick-start demo source: a short clip rendered from a photo that ships with the install.

Nothing is downloaded: scikit-image (the ``demo`` extra) carries NASA's portrait of astronaut
Eileen Collins (``skimage.data.astronaut()``). The clip shows her bare-faced for the first
half, then with a surgical mask drawn over nose, mouth and chin, while a slow pan and zoom
moves and scales the face so detection, tracking and the classification cache all work as
they do on a camera. With the shipped model it gives exactly one violation: a ``start``
during the bare-faced half and an ``end`` (``masked``) soon after the mask appears.

The mask outline was measured once on the photo (face box ~(175, 60)-(275, 175), eyes at
y~100, nose tip (225, 125), mouth y~145, chin y~180) and is fixed here in its pixels.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from maskd.clock import system_clock
from maskd.config import SourceConfig
from maskd.env import realtime
from maskd.types import Frame, SourceError

FPS = 15.0
SECONDS_PER_HALF = 4.0
SIZE = (640, 480)  # width, height
BACKGROUND = (118, 124, 128)  # BGR: a grey wall around the photo

# Mask outline in astronaut() pixels: over the nose bridge, down the cheeks, under the chin.
MASK_OUTLINE = np.array(
    [(177, 113), (200, 108), (225, 104), (250, 108), (273, 113), (272, 135), (266, 155),
     (252, 172), (236, 181), (214, 181), (198, 172), (184, 155), (178, 135)], np.int32)
MASK_BGR = (226, 196, 150)  # light surgical blue
PLEATS = [((181, 128), (269, 128)), ((183, 144), (267, 144)), ((190, 160), (260, 160))]
LOOPS = [((178, 116), (168, 98)), ((272, 116), (280, 98)),  # ear loops, over the hair
         ((182, 158), (170, 128)), ((268, 158), (280, 128))]


def astronaut_bgr() -> np.ndarray:
    """The bundled photo as BGR uint8 (512 x 512)."""
    try:
        from skimage import data
    except ImportError:
        raise SourceError(
            "source demo needs scikit-image (it ships the demo photo): "
            "pip install 'maskd[demo]' or pip install scikit-image") from None
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def draw_mask(photo: np.ndarray) -> np.ndarray:
    """A copy of the astronaut photo wearing a surgical mask (pleats, ear loops, soft edge)."""
    out = photo.copy()
    layer = out.copy()
    cv2.fillPoly(layer, [MASK_OUTLINE], MASK_BGR, cv2.LINE_AA)
    shade = tuple(int(c * 0.8) for c in MASK_BGR)
    for a, b in PLEATS:
        cv2.line(layer, a, b, shade, 2, cv2.LINE_AA)
    for a, b in LOOPS:
        cv2.line(layer, a, b, (235, 235, 235), 2, cv2.LINE_AA)
    cv2.polylines(layer, [MASK_OUTLINE], True, tuple(int(c * 0.7) for c in MASK_BGR), 2,
                  cv2.LINE_AA)
    # Feather the edge so it is not a paper cut-out, and take the face's broad shading (not
    # its features) so the mask follows the shape of the face.
    alpha = np.zeros(photo.shape[:2], np.float32)
    cv2.fillPoly(alpha, [MASK_OUTLINE], 1.0, cv2.LINE_AA)
    for a, b in LOOPS:
        cv2.line(alpha, a, b, 1.0, 2, cv2.LINE_AA)
    alpha = cv2.GaussianBlur(alpha, (5, 5), 0)[:, :, None]
    light = cv2.GaussianBlur(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), (41, 41), 0)
    cloth = layer.astype(np.float32) * (0.7 + 0.4 * light.astype(np.float32)[:, :, None] / 255.0)
    out = photo.astype(np.float32) * (1 - alpha) + np.clip(cloth, 0, 255) * alpha
    return out.astype(np.uint8)


def camera_pose(i: int, n: int) -> np.ndarray:
    """2x3 affine for frame i of n: slow zoom in and a pan, the face drifting across the view."""
    t = i / max(n - 1, 1)
    scale = 0.95 + 0.35 * t  # the face grows from ~95 to ~130 px
    face = np.array([225.0, 120.0])  # face centre in the photo
    target = np.array([250.0 + 150.0 * t, 170.0 + 25.0 * np.sin(2 * np.pi * t)])
    m = np.zeros((2, 3), np.float32)
    m[0, 0] = m[1, 1] = scale
    m[:, 2] = target - scale * face
    return m


def pass_frames(fps: float = FPS) -> int:
    """Frames in one pass of the person (bare-faced, then masked) at ``fps``."""
    return 2 * round(SECONDS_PER_HALF * fps)


class DemoSource:
    """The rendered clip behind the Source interface; plays once, or loops with ``loop``.

    Timestamps advance 1/fps per frame (like the file sources), so time-outs in tracking act
    the same however fast the clip is processed. With ``realtime`` it plays as a camera does:
    a frame is not given before its time, frames whose time the loop missed are skipped, and
    each is stamped with the clock when given (and the time since boot, as a camera's frames,
    so a step of the clock is told from time passing), so frame and event times keep to the
    clock (was: a looping demo raced at ~150 frames/s on more than a core, its events minutes
    ahead of the clock on the status page and in MQTT).
    """

    is_live = False

    def __init__(self, loop: bool = False, fps: float = FPS, realtime: bool = False) -> None:
        photo = astronaut_bgr()
        self._photos = (photo, draw_mask(photo))
        self.name = "demo"
        self.loop = loop
        self.fps = fps
        self.realtime = realtime
        self.frames_per_pass = pass_frames(fps)
        self.stats = {"frames": 0, "skipped": 0, "reopens": 0, "loops": 0, "corrupt": 0,
                      "read_errors": 0}
        self._t0 = time.time()
        self._b0 = 0.0  # realtime: the time since boot the clip started at
        self._seq = 0
        self._closed = False

    def render(self, i: int) -> np.ndarray:
        """Frame i of one pass: bare-faced for the first half, masked for the second."""
        n = self.frames_per_pass
        photo = self._photos[0 if i < n // 2 else 1]
        return cv2.warpAffine(photo, camera_pose(i, n), SIZE, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)

    def read(self) -> Frame | None:
        if self._closed or (not self.loop and self._seq >= self.frames_per_pass):
            return None
        since_boot = None
        if self.realtime:
            self._keep_time()
            stamp, since_boot = system_clock()
        else:
            stamp = self._t0 + self._seq / self.fps
        # a pass begun is a loop, as a looping file's (was: 0 for ever in the status)
        self.stats["loops"] = self._seq // self.frames_per_pass
        image = self.render(self._seq % self.frames_per_pass)
        frame = Frame(image, self._seq, stamp, self.name, since_boot)
        self._seq += 1
        self.stats["frames"] += 1
        return frame

    def _keep_time(self) -> None:
        """Wait for the next frame's time, or skip to the frame now due (a slow loop); timed by
        the time since boot, which a step of the wall clock does not move."""
        now = system_clock()[1]
        if not self.stats["frames"]:  # the clip starts when it is first read (models loaded)
            self._b0 = now
        late = now - (self._b0 + self._seq / self.fps)
        if late < 0:
            time.sleep(-late)
        elif late >= 1 / self.fps:
            missed = int(late * self.fps)
            self._seq += missed
            self.stats["skipped"] += missed

    def close(self) -> None:
        self._closed = True


def open_demo_source(cfg: SourceConfig) -> DemoSource:
    """The hook maskd.sources calls for ``source.kind: demo``: in real time as a looping file
    (``maskd.env.realtime``)."""
    return DemoSource(loop=cfg.loop, realtime=realtime(cfg.loop))
