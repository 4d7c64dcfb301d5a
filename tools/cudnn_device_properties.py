#!/usr/bin/env python3
"""The device properties cuDNN plans with, as the JSON it serializes them to.

cuDNN 9.8 and later run their heuristics and build execution plans for a device
described by these properties, without the device: the graph route's planning
test on the CPU (crates/alexnet-cuda, dnn::graph) does so for
fixtures/cudnn-device-h100.json.

  python3 tools/cudnn_device_properties.py read OUT.json   # on a GPU: device 0's
  python3 tools/cudnn_device_properties.py check FILE.json # anywhere: cuDNN accepts it
  python3 tools/cudnn_device_properties.py compare A.json B.json

`read` needs a GPU; `check` and `compare` do not. cuDNN is opened as
libcudnn.so.9 from the loader's path, or from ALEXNET_CUDNN_LIB.
"""

import ctypes
import json
import os
import sys

DEVICEPROP_DESCRIPTOR = 38  # CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR
ATTR_HANDLE = 2701  # CUDNN_ATTR_DEVICEPROP_HANDLE
ATTR_JSON = 2702  # CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION
TYPE_HANDLE = 0  # CUDNN_TYPE_HANDLE
TYPE_CHAR = 24  # CUDNN_TYPE_CHAR
MAX_JSON = 1 << 16


def cudnn():
    name = os.environ.get("ALEXNET_CUDNN_LIB", "libcudnn.so.9")
    try:
        return ctypes.CDLL(name)
    except OSError as e:
        sys.exit(f"cannot open cuDNN ({name}; set ALEXNET_CUDNN_LIB): {e}")


def call(lib, name, *args):
    status = getattr(lib, name)(*args)
    if status != 0:
        message = ctypes.create_string_buffer(4096)
        lib.cudnnGetLastErrorString(message, len(message))
        sys.exit(f"{name} failed with status {status}: {message.value.decode(errors='replace')}")


def descriptor(lib):
    desc = ctypes.c_void_p()
    call(lib, "cudnnBackendCreateDescriptor", DEVICEPROP_DESCRIPTOR, ctypes.byref(desc))
    return desc


def read(out):
    lib = cudnn()
    handle = ctypes.c_void_p()
    call(lib, "cudnnCreate", ctypes.byref(handle))
    desc = descriptor(lib)
    call(lib, "cudnnBackendSetAttribute", desc, ATTR_HANDLE, TYPE_HANDLE, ctypes.c_int64(1),
         ctypes.byref(handle))
    call(lib, "cudnnBackendFinalize", desc)
    text = ctypes.create_string_buffer(MAX_JSON)
    count = ctypes.c_int64()
    call(lib, "cudnnBackendGetAttribute", desc, ATTR_JSON, TYPE_CHAR, ctypes.c_int64(MAX_JSON),
         ctypes.byref(count), text)
    raw = text.raw[: count.value].rstrip(b"\0").decode()
    properties = json.loads(raw)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(properties, f, indent=2)
        f.write("\n")
    os.replace(tmp, out)
    print(f"{out}: {properties.get('deviceName', '?')}, {len(properties)} properties")


def check(path):
    lib = cudnn()
    data = open(path, "rb").read()
    desc = descriptor(lib)
    call(lib, "cudnnBackendSetAttribute", desc, ATTR_JSON, TYPE_CHAR, ctypes.c_int64(len(data)),
         ctypes.c_char_p(data))
    call(lib, "cudnnBackendFinalize", desc)
    print(f"{path}: cuDNN accepts it ({json.loads(data).get('deviceName', '?')})")


def compare(a, b):
    left, right = (json.load(open(p)) for p in (a, b))
    differ = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
    for key in differ:
        print(f"  {key}: {left.get(key)!r} in {a}, {right.get(key)!r} in {b}")
    print(f"{len(differ)} of {len(set(left) | set(right))} properties differ")


if __name__ == "__main__":
    commands = {"read": read, "check": check, "compare": compare}
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
