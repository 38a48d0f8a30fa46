"""A stand-in libedgetpu.so.1 for tests: no Coral (and no libedgetpu) can be installed here.

Built with gcc, it exports the two entry points the TFLite runtime's own ``load_delegate``
calls. Like the real library with no device, ``tflite_plugin_create_delegate`` returns NULL, so
the runtime raises its own ``ValueError: Failed to load delegate from libedgetpu.so.1``; once
the file ``plugged`` exists it returns a delegate, as if a Coral had been plugged in. That
delegate takes the model's last op and runs it through the op's own kernel (the rest stays on
the CPU: the answers are the CPU's), so every invoke passes through it: once ``plugged`` is
gone (``unplug``) the invoke fails as a Coral pulled out or reset mid-run does (the runtime's
``RuntimeError: ... Node number N (EdgeTpuDelegateForCustomOp) failed to invoke.``; with
``env(aborts=True)`` it aborts the process, as libedgetpu's failed checks can), and that
delegate stays failed, plugged again or not, as the real one's USB handle is gone for good: a
new delegate (a new process) works once it is plugged in again. ``env`` puts it where the
dynamic loader finds it by its real name (a fresh process: LD_LIBRARY_PATH is read at start).
The last op must need no scratch tensors of its own (a QUANTIZE, a SOFTMAX: the shipped
classifier's), since the runtime plans those only for the ops it runs itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

# The leading fields of the runtime's own structs (tensorflow/lite/core/c/common.h), as far as
# they are used here; a TfLiteRegistration goes by value, so zeros stand for any later fields.
SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct IntArray { int size; int data[]; } IntArray;
typedef struct Node { IntArray* inputs; IntArray* outputs; IntArray* intermediates;
                      IntArray* temporaries; void* user_data; } Node;
struct Context;
typedef struct Registration {
  void* (*init)(struct Context*, const char*, size_t);
  void (*free)(struct Context*, void*);
  int (*prepare)(struct Context*, Node*);
  int (*invoke)(struct Context*, Node*);
  const char* (*profiling_string)(const struct Context*, const Node*);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;
  void* async_kernel;
  uint64_t inplace_operator;
  char later_fields[64];
} Registration;
typedef struct Context {
  size_t tensors_size;
  int (*GetExecutionPlan)(struct Context*, IntArray**);
  void* tensors;
  void* impl_;
  int (*ResizeTensor)(struct Context*, void*, IntArray*);
  void (*ReportError)(struct Context*, const char*, ...);
  int (*AddTensors)(struct Context*, int, int*);
  int (*GetNodeAndRegistration)(struct Context*, int, Node**, Registration**);
  int (*ReplaceNodeSubsetsWithDelegateKernels)(struct Context*, Registration, const IntArray*, void*);
} Context;
typedef struct Delegate {
  void* data_;  /* here: 1 once an invoke failed (the device's handle is gone) */
  int (*Prepare)(Context* context, struct Delegate* delegate);
  void* copy_from; void* copy_to; void* free_handle;
  int64_t flags;
  void* opaque_builder;
} Delegate;
typedef struct Params { Delegate* delegate; IntArray* nodes; IntArray* in; IntArray* out; } Params;
typedef struct Kernel { Delegate* delegate; Node* node; Registration* reg; } Kernel;  /* the op taken */

static int plugged(void) {
  const char* path = getenv("FAKE_CORAL_PLUGGED");
  return path != NULL && access(path, F_OK) == 0;
}

static void* kernel_init(Context* context, const char* buffer, size_t length) {
  (void)length;
  const Params* params = (const Params*)buffer;
  Kernel* k = calloc(1, sizeof(Kernel));
  if (k == NULL) return NULL;
  k->delegate = params->delegate;
  if (context->GetNodeAndRegistration(context, params->nodes->data[0], &k->node, &k->reg) != 0) {
    free(k);
    return NULL;
  }
  return k;
}

static void kernel_free(Context* context, void* k) { (void)context; free(k); }

static int kernel_prepare(Context* context, Node* node) {
  Kernel* k = node->user_data;
  return k->reg->prepare == NULL ? 0 : k->reg->prepare(context, k->node);
}

static int kernel_invoke(Context* context, Node* node) {
  Kernel* k = node->user_data;
  if (k->delegate->data_ != NULL || !plugged()) {
    if (getenv("FAKE_CORAL_ABORTS") != NULL) abort();  /* as libedgetpu's failed checks do */
    k->delegate->data_ = (void*)1;
    context->ReportError(context, "Failed to execute request: USB transfer error "
                         "(stand-in: the Coral was unplugged). ");
    return 1;
  }
  return k->reg->invoke(context, k->node);
}

static int prepare(Context* context, Delegate* delegate) {
  IntArray* plan;
  if (context->GetExecutionPlan(context, &plan) != 0 || plan->size == 0) return 1;
  struct { int size; int data[1]; } last = {1, {plan->data[plan->size - 1]}};
  Registration reg;
  memset(&reg, 0, sizeof(reg));
  reg.init = kernel_init;
  reg.free = kernel_free;
  reg.prepare = kernel_prepare;
  reg.invoke = kernel_invoke;
  reg.custom_name = "EdgeTpuDelegateForCustomOp";
  reg.version = 1;
  return context->ReplaceNodeSubsetsWithDelegateKernels(context, reg, (const IntArray*)&last,
                                                        delegate);
}

void* tflite_plugin_create_delegate(char** keys, char** values, size_t n, void (*report)(const char*)) {
  (void)keys; (void)values; (void)n; (void)report;
  if (!plugged()) return NULL;  /* no device */
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
        subprocess.run(["gcc", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(self.lib),
                        str(folder / "fake_edgetpu.c")], check=True, capture_output=True)
        self.plugged = folder / "plugged"

    def plug(self) -> None:
        self.plugged.touch()

    def unplug(self) -> None:
        """Pulled out (or reset) mid-run: the next invoke fails."""
        self.plugged.unlink()

    def env(self, aborts: bool = False) -> dict[str, str]:
        """os.environ with the loader finding this library as libedgetpu.so.1; ``aborts``: an
        invoke once unplugged aborts the process instead of failing."""
        path = os.environ.get("LD_LIBRARY_PATH")
        return {**os.environ, "FAKE_CORAL_PLUGGED": str(self.plugged),
                "LD_LIBRARY_PATH": str(self.lib.parent) + (f":{path}" if path else ""),
                **({"FAKE_CORAL_ABORTS": "1"} if aborts else {})}


def lost_part_way(fake: FakeCoral, folder: Path, command: str, *options: str) -> list[dict]:
    """`maskd <command> --json --edgetpu <options> <folder>` over a folder of pictures with a face
    (more than a page of output lines), the stand-in Coral unplugged at its first output line:
    checks that the command exits 75 with its lines for a first run of the images, in order,
    and one line, no traceback, in `run`'s words for the Coral, saying up to which image the
    output goes and what to do. The records written."""
    import cv2

    from maskd.demo import astronaut_bgr

    folder.mkdir()
    names = [str(folder / f"{i:03d}.jpg") for i in range(60)]
    for p in names:
        cv2.imwrite(p, astronaut_bgr())  # a face BlazeFace finds: judged on the Coral
    rc, out, err = unplugged_at_the_first_line(fake, [
        sys.executable, "-m", "maskd", command, "--json", "--edgetpu", *options, str(folder)])
    assert rc == 75, err
    recs = [json.loads(line) for line in out.decode().splitlines()]
    done = [r["path"] for r in recs]
    assert 1 <= len(done) < len(names) and done == names[:len(done)], recs
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if line.startswith(f"maskd {command}: ")]
    verb = "scanned" if command == "scan" else "classified"
    assert len(said) == 1 and said[0].startswith(
        f"maskd {command}: the classifier's Coral stopped answering (Failed to execute request: "
        "USB transfer error (stand-in: the Coral was unplugged).") and said[0].endswith(
        "): unplugged, or reset (a USB brown-out: check the power supply); the output holds "
        f"every image up to {done[-1]} ({len(done)} {verb}), none after it: run {command} "
        "again once the Coral answers (it starts over), or leave out --edgetpu to run on the "
        "CPU"), err
    return recs


def unplugged_at_the_first_line(fake: FakeCoral, argv: Sequence[str],
                                ) -> tuple[int, bytes, str]:
    """``argv`` (a `maskd scan` or `classify` on the stand-in Coral, plugged in) with the Coral
    unplugged as soon as its first output line is written: (exit status, stdout, stderr).
    Standard output is a pipe held to one page that is not read until then, so the command is
    at most a page of lines ahead of the unplug, however slow this machine is."""
    fake.plug()
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen(list(argv), stdout=w, stderr=subprocess.PIPE, env=fake.env())
    os.close(w)
    try:
        with os.fdopen(r, "rb") as out:
            ready, _, _ = select.select([out], [], [], 120)
            assert ready, "no output line within 120 s"
            fake.unplug()
            stdout = out.read()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, err.decode(errors="replace")
