"""The annotated clip (``preview.annotate_dir``, ``run --annotate``): the run recorded as mp4v
segments that rotate and are capped, a rolling buffer on a full disk (its oldest segments make
room; only a disk full of other files pauses the recording, never the loop), in real time.

Each segment is ``<camera>-<YYYYmmdd-HHMMSS>.mkv`` (local time when it was opened). Matroska, not
mp4: an mp4's index (moov) is written only when the file is closed, so the segment open at a
``kill -9``, a watchdog kill or a power cut would not play at all, and that is the footage wanted
after a hang; a Matroska file cut anywhere plays up to what reached the disk (the open cluster and
the writer's 256 KiB buffer are lost: 1-2 s of the demo at 15 fps, more for a still scene).
``.mp4`` segments of older versions are still counted and deleted by the cap.

The file plays in real time: it is written at the fixed ``fps`` it is given (the source's), and
each frame is placed by its timestamp (``frame_copies``): a live loop that takes only the newest
frame (8 a second from a 30 fps camera) has the last frame repeated to fill the slots between
(it played 3.75 times too fast), a frame whose slot is written already is dropped, and a gap of
more than ``MAX_HOLD_S`` (a camera away) starts a new file rather than minutes of a frozen
frame. A file source's frames are ``1/fps`` apart, so each is written once. Live frames are placed
by ``since_boot``, which a wall clock step does not move.

A new segment starts after ``annotate_segment_s`` seconds of video (frame timestamps, so a file
source rotates by its own clock) or ``annotate_segment_mb``; the oldest closed segments of this
camera are deleted while they total more than ``annotate_keep_mb``. Files of other cameras or of
any other name are never touched.

Disk space: the clip is a rolling buffer. When fewer than ``min_free`` bytes are free on the
clip's file system (checked after every frame: one statvfs), this camera's oldest closed
segments are deleted until they are again (one line at most a minute says how many), so a
disk filled by the clip itself keeps the latest footage and goes on recording. Only when that
cannot make room (other files take the disk, or the open segment alone fills it) is the
segment closed while its index still fits, one ERROR line says so, and recording resumes by
itself once there is room again, checked every ``RETRY_S``. A card the kernel made read-only
(a storage error) is found by a probe file every ``WRITABLE_LOOK_S`` (OpenCV's writer does not
say that its writes fail) and pauses the recording the same way, with the reason; so does a
file that stopped growing while frames were written to it (writes failing with EIO on a card
that stays writable, ``STALL_S``), looked at then too.

Encoding runs in a writer thread of its own, so the recording never slows detection: the loop
hands over the frame (its array: sources hand out a fresh one per frame and nothing changes it
after the pipeline; the boxes are drawn on a copy, in the writer thread) and returns at once.
Up to ``QUEUE`` frames wait; a live frame that finds the queue full takes the place of the
oldest waiting one, which is dropped (``behind``, one WARNING a minute; the frame written before
it fills its slots, so the clip still plays in real time, up to the latest frame). Frames whose
times are made up (files, the demo) wait for room instead: nothing runs away meanwhile, and
their clip keeps every frame. An error in the thread closes the file being
written (said, with its traceback, at most once a minute) and the next frame starts a new one;
a thread that died is started again at the next frame. ``close`` writes what waits, for up to
``CLOSE_S``: a disk that hangs drops the rest (said), it never holds up the stop.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskd.annotate import draw_verdicts, header_text
from maskd.clock import oldest_first
from maskd.files import (
    FAT,
    PRIVATE_DIR,
    PRIVATE_FILE,
    READ_ONLY_NOW,
    failed_write,
    fs_type,
    read_only_now,
)
from maskd.lograte import RateLimitedLog
from maskd.types import Frame, FrameObserver, LoopStats, Verdict

log = logging.getLogger("maskd.clip")

MB = 1024 * 1024
MIN_FREE_BYTES = 16 * MB  # kept free: room for the segment's index (moov) and for the rest of the system
RETRY_S = 30.0  # while paused, how often to look for room again
# While recording, how often the folder's file system is tried (a probe file): OpenCV's writer
# says nothing when its writes fail, so on a card the kernel made read-only the clip went on
# "recording" (the log counted the frames) into nothing.
WRITABLE_LOOK_S = 10.0
# On a card whose writes fail (EIO) without going read-only, FFmpeg stops writing after the
# first failed write and OpenCV still says nothing: the file stops growing while frames are
# handed to it (was: "recording" into nothing, unseen). It writes in 256 KiB blocks, so a file
# may rightly not grow for a while: it is taken as failing once it has not grown for STALL_S
# of video that should have taken STALL_BYTES (at this file's bytes per frame so far; while
# still empty, at the last file's that grew at its close: a write failing at a file's start
# leaves it empty for good), or for STALL_EMPTY_S of video while still empty (nothing known
# yet, or a still scene); and then only where it did not grow at its close either (a scene
# turned cheap to encode grows then: ``_grew_at_close``).
STALL_S = 30.0
STALL_BYTES = 8 * 1024 * 1024
STALL_EMPTY_S = 300.0
NOT_GROWING = ("stopped growing while frames were written to it: its writes fail (an I/O "
               "error: a failing card? `dmesg` says why)")
# FAT (a stick's vfat, or msdos: FAT12, FAT16 and FAT32 alike, their sizes 32 bits) keeps no
# file of 4 GiB (4096 MiB): a larger segment stopped growing
# there and was paused as a failing card. One there ends at this size: a segment ends at the
# first frame past it, plus what the muxer held (its open cluster and index), well below 4 GiB.
FAT_SEGMENT_MB = 4000.0
RECENT = 100  # segments remembered (for names and tests); months of them would add up
SUFFIX = ".mkv"  # survives being cut off (see above); the codec stays mp4v
MAX_HOLD_S = 2.0  # a longer gap between frames starts a new file instead of a frozen frame
QUEUE = 2  # frames waiting for the writer thread: a live loop's further ones are dropped
CLOSE_S = 5.0  # the close waits this long for the waiting frames to be written
# mp4v (MPEG-4 part 2) keeps each side in 13 bits: a file for frames 8192 pixels or more on a
# side cannot be opened (a panorama in an images folder), so such frames are shrunk to this.
MAX_SIDE = 8190


def frame_copies(t: float, fps: float, written: int, t0: float) -> int:
    """Slots of a clip written at ``fps`` from ``t0`` that a frame taken at ``t`` fills now, when
    ``written`` are written: its own slot (the nearest to ``t``) and the ones before it, which
    repeat the previous frame. 0 or less: its slot is written already (a frame early, or
    ``-n``: ``n`` slots behind, a clock that went back); so the clip's length is the frames' time."""
    return math.floor((t - t0) * fps + 0.5) + 1 - written  # not round(): 0.5, 1.5 go up alike


def segment_pattern(camera: str) -> re.Pattern[str]:
    """The names of one camera's segments (the only files the cap deletes), ``.mp4`` of older
    versions included so that they still count toward the cap and go first."""
    return re.compile(rf"{re.escape(camera)}-\d{{8}}-\d{{6}}(?:_\d+)?\.(?:mkv|mp4)")


def written_size(w: int, h: int) -> tuple[int, int]:
    """The (width, height) a w x h frame is recorded at: even sides (``even_size``), and none
    over MAX_SIDE, the aspect kept (was: the clip paused for RETRY_S at such a frame, the
    frames after it not recorded)."""
    if max(w, h) > MAX_SIDE:
        scale = MAX_SIDE / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    return w + w % 2, h + h % 2


def fit_size(image: np.ndarray) -> np.ndarray:
    """``image`` at ``written_size``: shrunk when a side is over MAX_SIDE, then ``even_size``."""
    h, w = image.shape[:2]
    if max(w, h) > MAX_SIDE:
        fw, fh = written_size(w, h)
        image = cv2.resize(image, (fw, fh), interpolation=cv2.INTER_AREA)
    return even_size(image)


def even_size(image: np.ndarray) -> np.ndarray:
    """``image`` with its last row and/or column repeated once where the height or width is odd:
    mp4v needs even sides and the writer would silently drop the last row or column."""
    h, w = image.shape[:2]
    if not h % 2 and not w % 2:
        return image
    return cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


@dataclass(frozen=True, eq=False)
class _Shot:
    """What the writer thread needs of one frame: the loop's, never changed after (see above)."""

    image: np.ndarray  # the frame as captured; the boxes are drawn on a copy
    verdicts: tuple[Verdict, ...]
    header: str
    clock: float  # the time it is placed by (ClipWriter._clock)
    timestamp: float  # capture time (a segment's age)


class ClipWriter(FrameObserver):
    """FrameObserver writing the annotated frames as rotating, capped mp4v segments in ``outdir``.

    A segment is opened on the first frame after a rotation (the frame size is only known then).
    ``paths`` lists this run's latest ``RECENT`` segments, oldest first (deleted ones included).
    """

    def __init__(self, outdir: Path, name: str, fps: float, segment_s: float = 600.0,
                 segment_mb: float = 100.0, keep_mb: float = 1000.0,
                 min_free: int = MIN_FREE_BYTES) -> None:
        self.outdir = outdir
        self.name = name
        self.fps = fps
        self.segment_s = segment_s
        self.segment_mb = segment_mb  # as configured, for the line about FAT
        self.segment_bytes = int(segment_mb * MB)
        self._fat_said = False
        self.keep_mb = keep_mb  # as configured, for the log lines (1.5 was said '2 MB')
        self.keep_bytes = int(keep_mb * MB)
        self.min_free = min_free
        self.paths: deque[Path] = deque(maxlen=RECENT)
        self.frames = 0  # written, all segments (repeats included)
        self.repeats = 0  # of those, the previous frame again to fill a slot (a live loop's pace)
        self.early = 0  # frames not written: their slot was written already
        self.dropped = 0  # frames not recorded while paused
        self.deleted: deque[Path] = deque(maxlen=RECENT)  # removed by the cap, the latest
        self.deleted_for_room = 0  # segments removed because the disk was short of room
        self._room_unsaid = 0  # of those, not yet in a log line (said at most once a minute)
        self.paused: str | None = None  # why recording is paused now
        self._last_pause = ""  # why it was paused last (for the summary at the close)
        self._pattern = segment_pattern(name)
        self._writer: cv2.VideoWriter | None = None
        self._path: Path | None = None
        self._seg_frames = 0
        self._seg_t0 = 0.0
        self._slot_t0 = 0.0  # the segment's first frame on the placing clock (see _clock)
        self._last: np.ndarray | None = None  # the frame last written, to repeat into a gap
        self._shape: tuple[int, ...] = ()  # the open file's frame height and width
        self._size = 0
        self._seg_bytes = self.segment_bytes  # the open file's (``_segment_cap``)
        self._grew_frames = 0  # the open file's frame count when its size last changed
        self._rate: float | None = None  # bytes per frame of the last file that grew at its close
        self._proving = False  # a new file after failed writes: recording again once it grows
        self._retry_at = 0.0
        self._writable_look_at = 0.0
        self._rlog = RateLimitedLog(log)  # the writer thread's lines
        self._loop_log = RateLimitedLog(log)  # the loop's (frames dropped, a thread restarted)
        self.behind = 0  # live frames dropped: the writer thread was still busy with earlier ones
        self.failures = 0  # frames lost to an unexpected error in the writer thread
        self._q: queue.Queue[_Shot | None] = queue.Queue(maxsize=QUEUE)
        self._closed = False
        why = self._make_dir()
        if why is not None:
            self._pause(why)
        self._cap()
        self._thread: threading.Thread | None = None  # started at the first frame

    # ------------------------------------------------------------------ FrameObserver (loop)

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        """Hand the frame to the writer thread; never waits for it with a live frame."""
        if self._closed:
            return
        live = frame.since_boot is not None
        shot = _Shot(frame.image, tuple(verdicts), header_text(stats), self._clock(frame),
                     frame.timestamp)
        while True:
            if self._thread is None:
                self._thread = self._start()
            elif not self._thread.is_alive():
                self._restart()
            try:
                self._q.put(shot, block=not live, timeout=None if live else 1.0)
                return
            except queue.Full:
                if live:  # the oldest waiting goes: the clip keeps up to the latest moment
                    self.behind += self._drop_oldest()
                    self._say_behind()

    def faults(self) -> list[str]:
        paused = self.paused  # set by the writer thread
        return [] if paused is None else [f"annotated clip {self.name}: recording paused ({paused})"]

    def _drop_oldest(self) -> int:
        """Take the oldest waiting frame off the queue; 1, or 0 when the writer took it
        meanwhile (or it was the stop's None)."""
        try:
            shot = self._q.get_nowait()
        except queue.Empty:
            return 0
        self._q.task_done()
        return int(shot is not None)

    def flush(self, timeout: float = CLOSE_S) -> bool:
        """Wait up to ``timeout`` s until every frame handed over is written; whether it is."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and self._thread is not None and self._thread.is_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return not self._q.unfinished_tasks

    def close(self, timeout: float | None = None) -> None:
        """Write what waits (``CLOSE_S`` at most), stop the thread, close the file."""
        if self._closed:
            return
        self._closed = True
        timeout = CLOSE_S if timeout is None else timeout
        deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:  # the writer makes room as it writes; a hung one never does
                self._q.put(None, timeout=timeout)
            except queue.Full:
                pass
            thread.join(max(0.0, deadline - time.monotonic()))
        lost = self._drain()
        if thread is not None and thread.is_alive():  # stuck in a write: it owns the file (it plays cut off)
            self.behind += lost
            log.warning("annotated clip %s: the writer did not finish within %g s of the stop; "
                        "%d frames still waiting were dropped (a write to %s still hangs)",
                        self.name, timeout, lost, self.outdir)
            self._q.put_nowait(None)  # room now: should the disk wake up, the thread ends
            return
        self.failures += lost  # a thread that died with frames waiting (said when it died)
        self._close_left_segment()
        self._cap()
        self._say_room(force=True)
        if self.dropped:
            log.warning("annotated clip %s: %d frames not recorded (%s)", self.name,
                        self.dropped, self.paused or f"paused: {self._last_pause}")
        if self.behind or self.failures:
            log.warning("annotated clip %s: %d frames dropped while the writer was behind, %d "
                        "lost to errors", self.name, self.behind, self.failures)

    def _say_behind(self) -> None:
        self._loop_log(logging.WARNING, "behind", "annotated clip %s: the writer is behind (%d "
                       "frames waiting); the oldest dropped, %d so far (detection goes on; the "
                       "clip repeats the picture before in its place)", self.name, QUEUE,
                       self.behind)

    def _drain(self) -> int:
        """Take every waiting frame off the queue (the writer thread is gone or stuck); how
        many there were."""
        return sum(self._drop_oldest() for _ in range(self._q.qsize()))

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name=f"maskd-clip-{self.name}", daemon=True)
        thread.start()
        return thread

    def _restart(self) -> None:
        """The writer thread died (an error its guard does not catch): frames would only pile
        up, and the recording stop for good; it is said, and a new thread takes over from a
        new file."""
        self._loop_log(logging.ERROR, "restart", "annotated clip %s: the writer thread stopped; "
                       "starting it again with a new file", self.name)
        self.failures += self._drain()
        self._close_left_segment()
        self._thread = self._start()

    def _close_left_segment(self) -> None:
        """Close the file from the loop's thread, the writer thread gone (a restart, the stop): a
        writer left broken by the error that ended that thread may raise in ``release``, and that
        must neither keep the clip down nor, at the stop, skip the other observers' and the
        sinks' close (the service closes its observers one after another); said, and let go."""
        try:
            self._close_segment()
        except Exception as err:  # noqa: BLE001 - see above
            log.error("annotated clip %s: %s could not be closed (%s: %s); it may not play to its "
                      "end", self.name, self._path, type(err).__name__, err)
            self._writer = None

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            shot = self._q.get()
            try:
                if shot is None:
                    return
                self._write(shot)
            except Exception:  # noqa: BLE001 - the clip must outlive any one frame
                self.failures += 1
                if self._rlog.due("error"):
                    log.exception("annotated clip %s: unexpected error; %s closed, the next frame "
                                  "starts a new file", self.name, self._path)
                self._abandon()
            finally:
                self._q.task_done()

    def _abandon(self) -> None:
        """Close the file after an error, whatever state it left (best effort)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.release()
            except Exception:  # noqa: BLE001, S110 - nothing more to save of it
                pass

    def _write(self, shot: _Shot) -> None:
        """Place one frame (repeating the last one into the slots before it) and write it."""
        copies = 1
        if self._writer is not None:
            copies = frame_copies(shot.clock, self.fps, self._seg_frames, self._slot_t0)
            if self._segment_full(shot) or self._off_pace(copies):
                self._close_segment()
                self._cap()
                copies = 1
        if self._writer is None and not self._open(shot):
            self.dropped += 1
            return
        if copies <= 0:
            self.early += 1
            return
        assert self._writer is not None
        image = fit_size(draw_verdicts(shot.image, list(shot.verdicts), shot.header))
        for _ in range(copies - 1):
            self._writer.write(self._last)
        self._writer.write(image)
        self._last = image
        self.frames += copies
        self.repeats += copies - 1
        self._seg_frames += copies
        self._check_room()

    # ------------------------------------------------------------------ segments

    @staticmethod
    def _clock(frame: Frame) -> float:
        """The time a frame is placed by: seconds since boot where the source reads them (live
        cameras: a wall clock step must not open a gap), else its timestamp (1/fps apart)."""
        return frame.since_boot if frame.since_boot is not None else frame.timestamp

    def _off_pace(self, copies: int) -> bool:
        """A gap longer than MAX_HOLD_S (a camera away, a stalled loop) or a clock gone back as
        far: a new file, named when recording went on, instead of a frozen frame held for minutes
        or every frame dropped until the clock catches up; said at most once a minute."""
        limit = MAX_HOLD_S * self.fps
        if -limit <= copies - 1 <= limit:
            return False
        self._rlog(logging.INFO, "gap", "annotated clip %s: %s of %.1f s between frames; new file",
                   self.name, "a gap" if copies > 0 else "the clock went back", abs(copies - 1)
                   / self.fps)
        return True

    def _segment_full(self, shot: _Shot) -> bool:
        """Time to start a new file: by age, by size, or because the frames changed size (a
        camera back at another resolution; the open file cannot take them)."""
        age = shot.timestamp - self._seg_t0
        if shot.image.shape[:2] != self._shape:  # at most a line a minute: an images folder
            # of photos of many sizes changes at every frame (a line each, 7 a second)
            self._rlog(logging.INFO, "size", "annotated clip %s: frames are %dx%d now (were "
                       "%dx%d); new file", self.name, shot.image.shape[1], shot.image.shape[0],
                       self._shape[1], self._shape[0])
            return True
        return age >= self.segment_s or age < -1.0 or self._size >= self._seg_bytes

    def _new_path(self) -> Path:
        path = self.outdir / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}{SUFFIX}"
        n = 1
        while path.exists() or path in self.paths:  # two rotations within one second
            path = self.outdir / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}_{n}{SUFFIX}"
            n += 1
        return path

    def _open(self, shot: _Shot) -> bool:
        now = time.monotonic()
        if self.paused is not None:
            if now < self._retry_at:
                return False
            free = self._free() if self._make_dir() is None else None
            if free is not None and free < self.min_free:
                free = self._make_room(free)
            if free is None or free < self.min_free or read_only_now(self.outdir):
                self._retry_at = now + RETRY_S
                return False
            again: float | None = free  # said once the file is made: a create may still fail
        else:
            again = None
            why = self._make_dir()  # deleted since the last segment (rm -rf, a tmpfiles rule)
            if why is not None:
                self._pause(why)
                return False
            free = self._free()
            if free is not None and free < self.min_free:
                free = self._make_room(free)
            if free is not None and free < self.min_free:
                self._pause(f"{free / MB:.1f} MB free, under the {self.min_free / MB:.0f} MB "
                            f"kept free")
                return False
        h, w = shot.image.shape[:2]
        path = self._new_path()
        try:  # made here with its mode: OpenCV's writer keeps it, and would give 0644
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE))
        except OSError as err:
            self._pause(f"cannot create {path}: {failed_write(err, self.outdir)}")
            return False
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), self.fps,
                                 written_size(w, h))
        if not writer.isOpened():
            writer.release()
            path.unlink(missing_ok=True)
            self._pause(f"OpenCV cannot write an mp4v clip at {path}")
            return False
        self._writer, self._path, self._shape = writer, path, (h, w)
        self.paths.append(path)
        if again is not None:  # after failed writes, paused still (its problem line) until it grows
            self._proving = NOT_GROWING in self._last_pause
            if not self._proving:
                log.info("annotated clip %s: recording again (%.0f MB free); %d frames were "
                         "not recorded", self.name, again / MB, self.dropped)
                self.paused = None
        self._seg_frames, self._seg_t0, self._size, self._grew_frames = 0, shot.timestamp, 0, 0
        self._slot_t0 = shot.clock
        self._seg_bytes = self._segment_cap()
        return True

    def _segment_cap(self) -> int:
        """The size at which the open segment ends: ``segment_mb``, or ``FAT_SEGMENT_MB`` on
        FAT, said once (the folder's file system is looked at per file: a stick mounted
        later, or another one)."""
        fs = fs_type(self.outdir)
        if fs not in FAT or self.segment_bytes <= FAT_SEGMENT_MB * MB:
            return self.segment_bytes
        if not self._fat_said:
            self._fat_said = True
            log.info("annotated clip %s: %s is on %s (FAT), which keeps no file of 4 GiB: its "
                     "segments end at %g MB, not preview.annotate_segment_mb's %g", self.name,
                     self.outdir, fs, FAT_SEGMENT_MB, self.segment_mb)
        return int(FAT_SEGMENT_MB * MB)

    def _close_segment(self, stalled: bool = False) -> bool:
        """Close the open file; whether it grew at its close (what FFmpeg held reached the disk:
        its writes work). Its bytes per frame then judge the next file while that one is still
        empty (``_not_growing``): a write failing at a file's start leaves it empty for good.
        Closed for not growing (``stalled``), those of its frames since it last grew: the scene
        turned cheap and the next file goes on with it (its whole file's split a night twice)."""
        if self._writer is None:
            return False
        self._writer.release()
        self._writer = None
        assert self._path is not None
        try:
            size: int | None = self._path.stat().st_size
        except OSError:
            size = None
        # Not grown at its close either: its writes fail, and the frames handed to it since it
        # last grew never reached it (the line claimed them all: 519 frames of an empty file).
        lost = self._seg_frames - self._grew_frames if size is not None and size <= self._size \
            else 0
        lost_words = "none were written" if lost == self._seg_frames else \
            f"the last {lost} were not written"
        log.info("annotated clip: %s (%d frames%s)", self._path, self._seg_frames,
                 f"; {lost_words}: its writes failed" if lost else "")
        if size is None or size <= self._size:
            return False
        grew, frames = (size - self._size, self._seg_frames - self._grew_frames) if stalled \
            else (size, self._seg_frames)
        self._rate = grew / max(frames, 1)
        return True

    def _check_room(self) -> None:
        """After each frame: the segment's size (rotation) and the disk (pause before it is full)."""
        assert self._path is not None and self._writer is not None
        try:
            size = self._path.stat().st_size
            if size != self._size:
                self._size, self._grew_frames = size, self._seg_frames
                self._proven()
        except (FileNotFoundError, NotADirectoryError):
            self._lost_segment()
            return
        except OSError:
            pass
        free = self._free()
        if free is not None and free < self.min_free:
            free = self._make_room(free)
        if free is not None and free < self.min_free:
            self._close_segment()
            self._pause(f"{free / MB:.1f} MB free, under the {self.min_free / MB:.0f} MB kept free")
            return
        if (now := time.monotonic()) >= self._writable_look_at:
            self._writable_look_at = now + WRITABLE_LOOK_S
            if read_only_now(self.outdir):
                self._close_segment()
                self._pause(READ_ONLY_NOW)
            elif self._not_growing() and not self._grew_at_close():
                self._pause(f"{self._path.name} {NOT_GROWING}")

    def _not_growing(self) -> bool:
        """The open file has not grown for longer than its writes can rightly be held back
        (see STALL_S): they fail."""
        stalled = self._seg_frames - self._grew_frames
        if stalled < STALL_S * self.fps:
            return False
        rate = self._size / max(self._grew_frames, 1) if self._size else self._rate or 0.0
        return stalled * rate >= STALL_BYTES or (not self._size
                                                 and stalled >= STALL_EMPTY_S * self.fps)

    def _grew_at_close(self) -> bool:
        """Close the file that has not grown; whether it grew at its close: what FFmpeg held went
        to the disk, so its writes work and the scene only turned cheap to encode (a night, a
        still hall: a minute or more per 256 KiB after a busy stretch); the next frame starts a
        new file, whose own bytes per frame judge it (was: paused as a failing card)."""
        assert self._path is not None
        grew = self._close_segment(stalled=True)
        if grew:
            log.info("annotated clip %s: %s had not grown for %d frames but grew at its close "
                     "(a scene cheap to encode); recording goes on in a new file", self.name,
                     self._path.name, self._seg_frames - self._grew_frames)
            self._proven()
        return grew

    def _proven(self) -> None:
        """The open file grew: after failed writes (``_proving``), recording again."""
        if self._proving:
            self._proving, self.paused = False, None
            log.info("annotated clip %s: recording again (%s grows)", self.name, self._path)

    def _lost_segment(self) -> None:
        """The open file was deleted (by hand, with its folder, or by the cap of another writer of
        this camera name in this folder): frames written on would vanish with the unlinked file
        and it would never rotate, so drop it; the next frame starts a new file."""
        assert self._writer is not None
        self._writer.release()
        self._writer = None
        self._rlog(logging.WARNING, "deleted", "annotated clip %s: %s was deleted while being "
                   "written (by hand, or by another maskd recording camera name %r into %s: each "
                   "needs its own camera name or folder); starting a new file", self.name,
                   self._path, self.name, self.outdir)

    def _make_dir(self) -> str | None:
        """Create the folder if it is missing, at start and before every new file, so that a
        folder deleted or blocked for a while does not pause the recording for good; why not."""
        try:
            self.outdir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        except OSError as err:
            return f"cannot create the folder: {failed_write(err, self.outdir)}"
        return None

    def _free(self) -> int | None:
        try:
            return shutil.disk_usage(self.outdir).free
        except OSError:
            return None

    def _pause(self, why: str) -> None:
        """Paused, said once: a retry that fails again (a folder this user may not write, not
        only a full disk) was a false 'recording again' and a new ERROR every RETRY_S."""
        was = self.paused
        self.paused = self._last_pause = why
        self._retry_at = time.monotonic() + RETRY_S
        if was is None:
            log.error("annotated clip %s in %s: %s; recording paused (detection goes on), "
                      "tried again every %.0f s", self.name, self.outdir, why, RETRY_S)

    def _segments(self) -> list[tuple[float, int, Path]]:
        """This camera's segments on disk as (mtime, size, path), oldest first (those this
        writer wrote last: ``clock.oldest_first``); [] if unreadable."""
        try:
            found = {Path(e.path): (e.stat().st_mtime, e.stat().st_size)
                     for e in os.scandir(self.outdir)
                     if self._pattern.fullmatch(e.name) and e.is_file()}
        except OSError:
            return []
        return [(*found[p], p) for p in oldest_first({p: m for p, (m, _) in found.items()},
                                                     self.paths)]

    def _delete(self, path: Path) -> bool:
        """Delete a closed segment of this camera (never the open one); whether it went."""
        if path == self._path and self._writer is not None:
            return False
        try:
            path.unlink()
        except OSError as err:  # the cap tries each again at every new file: once a minute
            self._rlog(logging.WARNING, "delete", "annotated clip: cannot delete %s: %s", path,
                       err.strerror or err)
            return False
        self.deleted.append(path)
        return True

    def _make_room(self, free: int) -> int:
        """Delete this camera's oldest closed segments until ``min_free`` bytes are free, so that
        a disk filled by the clip itself rolls on instead of pausing for good with the oldest
        footage; none at all if even all of them would not make room (footage lost for
        nothing). Returns the bytes free now."""
        segs = [(size, path) for _, size, path in self._segments()
                if not (path == self._path and self._writer is not None)]
        if free + sum(size for size, _ in segs) < self.min_free:
            return free
        for size, path in segs:
            if free >= self.min_free:
                break
            if self._delete(path):
                self.deleted_for_room += 1
                self._room_unsaid += 1
                now = self._free()
                free = now if now is not None else free + size
        self._say_room()
        return free

    def _say_room(self, force: bool = False) -> None:
        """One INFO line at most a minute (and one at the close) for the segments deleted for
        room: a rolling buffer deletes one every few minutes, which is no news each time."""
        if self._room_unsaid and (force or self._rlog.due("room")):
            log.info("annotated clip %s: old segments deleted for room: %d (the disk keeps %.0f MB "
                     "free; the clip is a rolling buffer of the latest footage)", self.name,
                     self._room_unsaid, self.min_free / MB)
            self._room_unsaid = 0

    def _cap(self) -> None:
        """Delete this camera's oldest closed segments while they total more than the cap."""
        segs = self._segments()
        total = sum(s for _, s, _ in segs)
        for _, size, path in segs:
            if total <= self.keep_bytes:
                break
            if not self._delete(path):
                continue
            total -= size
            log.info("annotated clip: deleted %s (the clips of %s were over annotate_keep_mb "
                     "%g MB)", path.name, self.name, self.keep_mb)
