"""The messages between a decoder worker and its pool are typed and survive pickling, the way they
travel (:class:`multiprocessing.connection.Connection` pickles them)."""

from __future__ import annotations

import logging
import pickle
import socket
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from fracsight.io import shared_pixels
from fracsight.io.worker import (
    Decoded,
    Failed,
    Job,
    Missing,
    Note,
    OutOfMemory,
    Refused,
    _Capture,
    _read,
)

NOTES = [Note("fracsight.io.read", logging.WARNING, "upload: MONOCHROME1 inverted")]
MESSAGES = [
    Job("upload", None, b"\x00\x01", 10_000, 1024),
    Job("wrist.png", "/tmp/wrist.png", None, None, None),
    Decoded((3, 4), np.dtype(np.uint16).str, "png", {"bits": 16}, None, NOTES),
    Refused("NotARadiograph", "a colour photograph, not a radiograph", NOTES),
    Missing([]),
    OutOfMemory(NOTES),
    Failed("KeyError", []),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_pickles_to_an_equal_one(message: object) -> None:
    again = pickle.loads(pickle.dumps(message))
    assert again == message and type(again) is type(message)
    with pytest.raises(AttributeError):
        message.notes = []  # type: ignore[attr-defined]  # frozen: a message is not changed on the way


def test_a_read_answers_with_named_fields(sample_images: list[Path], tmp_path: Path) -> None:
    capture = _Capture(logging.INFO)
    reply, pixels, healthy = _read(Job("x", str(sample_images[0]), None, None, None), capture)
    assert isinstance(reply, Decoded) and healthy and pixels is not None
    assert reply.shape == pixels.shape and np.dtype(reply.dtype) == pixels.dtype and reply.format
    missing, _, healthy = _read(Job("gone", str(tmp_path / "gone.png"), None, None, None), capture)
    assert isinstance(missing, Missing) and healthy
    refused, _, healthy = _read(Job("junk", None, b"not an image at all", None, None), capture)
    assert isinstance(refused, Refused) and refused.error and refused.reason and healthy


def test_a_decoded_reply_and_its_pixels_cross_a_connection(sample_images: list[Path]) -> None:
    ours, theirs = socket.socketpair()
    parent, child = Connection(ours.detach()), Connection(theirs.detach())
    try:
        reply, pixels, _ = _read(Job("x", str(sample_images[0]), None, None, None), _Capture(logging.INFO))
        child.send(reply)
        shared_pixels.send(child, pixels)
        got = parent.recv()
        assert got == reply
        assert np.array_equal(shared_pixels.receive(parent, got.shape, np.dtype(got.dtype)), pixels)
    finally:
        parent.close()
        child.close()
