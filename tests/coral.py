"""A stand-in libedgetpu.so.1 for tests: no Coral (and no libedgetpu) can be installed here.

Built with gcc, it exports the two entry points the TFLite runtime's own ``load_delegate``
calls. Like the real library with no device, ``tflite_plugin_create_delegate`` returns NULL, so
the runtime raises its own ``ValueError: Failed to load delegate from libedgetpu.so.1``; once
the file ``plugged`` exists it returns a delegate, as if a Coral had been plugged in. That
delegate takes the model's last op and runs it through the op's own kernel (the rest stays on
the CPU: the answers are the CPU's), so every invoke passes through it: once ``plugged`` is
gone (``unplug``) the invoke fails as a Coral pulled out or reset mid-run does (the runtime's
``RuntimeError: ... Node number N (EdgeTpuDelegateForCustomOp) failed to invoke.``), and that
delegate stays failed, plugged again or not, as the real one's USB handle is gone for good: a
new delegate (a new process) works once it is plugged in again. ``env`` puts it where the
dynamic loader finds it by its real name (a fresh process: LD_LIBRARY_PATH is read at start).
The last op must need no scratch tensors of its own (a QUANTIZE, a SOFTMAX: the shipped
classifier's), since the runtime plans those only for the ops it runs itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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

    def env(self) -> dict[str, str]:
        """os.environ with the loader finding this library as libedgetpu.so.1."""
        path = os.environ.get("LD_LIBRARY_PATH")
        return {**os.environ, "FAKE_CORAL_PLUGGED": str(self.plugged),
                "LD_LIBRARY_PATH": str(self.lib.parent) + (f":{path}" if path else "")}
