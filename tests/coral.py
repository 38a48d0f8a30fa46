"""A stand-in libedgetpu.so.1 for tests: no Coral (and no libedgetpu) can be installed here.

Built with gcc, it exports the two entry points the TFLite runtime's own ``load_delegate``
calls. Like the real library with no device, ``tflite_plugin_create_delegate`` returns NULL, so
the runtime raises its own ``ValueError: Failed to load delegate from libedgetpu.so.1``; once
the file ``plugged`` exists it returns a delegate that takes no node (the model then runs on
the CPU), as if a Coral had been plugged in. ``env`` puts it where the dynamic loader finds it
by its real name (a fresh process: LD_LIBRARY_PATH is read at start).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

/* TfLiteDelegate (tensorflow/lite/core/c/common.h): Prepare is the only callback used. */
typedef struct Delegate {
  void* data_;
  int (*Prepare)(void* context, struct Delegate* delegate);
  void* copy_from; void* copy_to; void* free_handle;
  int64_t flags;
  void* opaque_builder;
} Delegate;

static int prepare(void* context, Delegate* delegate) { (void)context; (void)delegate; return 0; }

void* tflite_plugin_create_delegate(char** keys, char** values, size_t n, void (*report)(const char*)) {
  (void)keys; (void)values; (void)n; (void)report;
  const char* plugged = getenv("FAKE_CORAL_PLUGGED");
  if (plugged == NULL || access(plugged, F_OK) != 0) return NULL;  /* no device */
  Delegate* d = calloc(1, sizeof(Delegate));
  if (d != NULL) d->Prepare = prepare;
  return d;
}

void tflite_plugin_destroy_delegate(void* d) { free(d); }
"""


class FakeCoral:
    """The built library in ``folder``, and the file that says the Coral is plugged in."""

    def __init__(self, folder: Path):
        if shutil.which("gcc") is None:
            pytest.skip("needs gcc to build the stand-in libedgetpu.so.1")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fake_edgetpu.c").write_text(SOURCE)
        self.lib = folder / "libedgetpu.so.1"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(self.lib),
                        str(folder / "fake_edgetpu.c")], check=True, capture_output=True)
        self.plugged = folder / "plugged"

    def plug(self) -> None:
        self.plugged.touch()

    def env(self) -> dict[str, str]:
        """os.environ with the loader finding this library as libedgetpu.so.1."""
        path = os.environ.get("LD_LIBRARY_PATH")
        return {**os.environ, "FAKE_CORAL_PLUGGED": str(self.plugged),
                "LD_LIBRARY_PATH": str(self.lib.parent) + (f":{path}" if path else "")}
