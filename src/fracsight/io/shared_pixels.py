"""Decoded pixels from a worker process to its parent without copying them through a socket.

A 3000 x 3000 radiograph is 36 MB of float32: sent through the socket it costs the two
processes about 100 ms of copying (multiprocessing reads a message whole into a buffer
before copying it out). On Linux the worker writes the pixels once into an anonymous
memory file and passes its descriptor over the socket; the parent maps it copy-on-write,
so the array is writable and its memory is freed with it. Elsewhere the bytes go through
the socket.
"""

from __future__ import annotations

import mmap
import os
import socket
from multiprocessing.connection import Connection

import numpy as np

_BY_DESCRIPTOR = hasattr(os, "memfd_create") and hasattr(socket, "send_fds")


def send(conn: Connection, pixels: np.ndarray) -> None:
    """Hand ``pixels`` (C-contiguous) to the other end of ``conn``."""
    data = memoryview(pixels).cast("B")
    if not _BY_DESCRIPTOR:
        conn.send_bytes(data)
        return
    descriptor = os.memfd_create("fracsight-pixels", os.MFD_CLOEXEC)
    try:
        written = 0
        while written < len(data):
            written += os.write(descriptor, data[written:])
        with _Borrowed(conn) as channel:
            socket.send_fds(channel, [b"p"], [descriptor])
    finally:
        os.close(descriptor)


def receive(conn: Connection, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The array :func:`send` handed over, writable, owned by this process from now on."""
    size = int(np.prod(shape)) * dtype.itemsize
    if not _BY_DESCRIPTOR:
        pixels = np.empty(shape, dtype=dtype)
        conn.recv_bytes_into(memoryview(pixels).cast("B"))
        return pixels
    with _Borrowed(conn) as channel:
        _, descriptors, _, _ = socket.recv_fds(channel, 1, 1)
    if not descriptors:
        raise EOFError("the worker closed the connection before sending the pixels")
    try:
        mapped = mmap.mmap(descriptors[0], size, access=mmap.ACCESS_COPY)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
    return np.frombuffer(mapped, dtype=dtype).reshape(shape)


class _Borrowed(socket.socket):
    """``conn``'s socket for one descriptor-passing call; the descriptor stays ``conn``'s."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(fileno=conn.fileno())

    def __exit__(self, *exc: object) -> None:
        self.detach()
