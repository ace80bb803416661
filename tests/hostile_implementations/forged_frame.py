"""Writes a pickle frame of its own straight into the worker's pipe (the descriptor is the worker's first
argument), in multiprocessing's framing, hoping the parent unpickles it."""
import os
import pickle
import struct
import sys
import time

from hostile_implementations import Payload, record

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    frame = pickle.dumps(("ok", Payload("forged frame")))
    os.write(int(sys.argv[1]), struct.pack("!i", len(frame)) + frame)
    time.sleep(60)
