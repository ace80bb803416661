"""Declares two small arrays in a reply of its own, then writes a 255 MiB frame for each straight into the worker's
pipe (the descriptor is the worker's first argument), hoping the parent buffers them all."""
import json
import os
import sys
import time
from multiprocessing.connection import Connection

from hostile_implementations import record

record("imported")
FRAMES = 2


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    connection = Connection(os.dup(int(sys.argv[1])))
    small = {"t": "array", "dtype": "<f8", "shape": [2], "layout": "contiguous"}
    header = {"kind": "ok", "value": {"t": "list", "v": [{"t": "tuple", "v": [small] * FRAMES}, {"t": "list", "v": []}]},
              "buffers": FRAMES}
    connection.send_bytes(json.dumps(header).encode())
    blob = b"\0" * (255 << 20)
    for _ in range(FRAMES):
        connection.send_bytes(blob)
    time.sleep(60)
