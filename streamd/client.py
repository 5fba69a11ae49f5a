"""Receive streamd's colour frames over ZeroMQ (wire format: docs/wire-format.md).

    from streamd.client import Subscriber
    for header, image in Subscriber("tcp://127.0.0.1:5555", "cam1"):
        print(header["seq"], image.shape)   # image: BGR (H, W, 3) for bgr24 and jpeg
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import cv2
import numpy as np
import zmq
import zmq.auth

REQUIRED = {"camera": str, "seq": int, "width": int, "height": int, "format": str, "colorized": bool}


class WireError(ValueError):
    """A message that does not follow the wire format."""


def decode(parts: list[bytes]) -> tuple[dict, np.ndarray]:
    """[topic, JSON header, payload] -> (header, image). bgr24 and jpeg give BGR (H, W, 3) uint8;
    yuv420p gives the planar (H * 3/2, W) array that cv2.cvtColor(..., cv2.COLOR_YUV2BGR_I420) takes."""
    if len(parts) != 3:
        raise WireError(f"expected 3 message parts (topic, header, payload), got {len(parts)}")
    _, head, data = parts
    try:
        header = json.loads(bytes(head))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(header.get(key), kind) or (kind is int and isinstance(header.get(key), bool)):
            raise WireError(f"header field {key!r} missing or not {kind.__name__}")
    w, h, fmt = header["width"], header["height"], header["format"]
    if not (0 < w <= 16384 and 0 < h <= 16384):
        raise WireError(f"implausible frame size {w}x{h}")
    data = bytes(data)
    if fmt == "bgr24":
        if len(data) != w * h * 3:
            raise WireError(f"bgr24 payload of {len(data)} bytes for {w}x{h}")
        return header, np.frombuffer(data, np.uint8).reshape(h, w, 3)
    if fmt == "yuv420p":
        if w % 2 or h % 2 or len(data) != w * h * 3 // 2:
            raise WireError(f"yuv420p payload of {len(data)} bytes for {w}x{h}")
        return header, np.frombuffer(data, np.uint8).reshape(h * 3 // 2, w)
    if fmt == "jpeg":
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (h, w):
            raise WireError("jpeg payload does not decode to the size in the header")
        return header, image
    raise WireError(f"unknown payload format {fmt!r}")


class Subscriber:
    """Subscribes to some cameras (all when none are named) of a streamd ZeroMQ endpoint."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", *cameras: str, hwm: int = 4,
                 server_public_key: bytes | None = None, context: zmq.Context | None = None,
                 client_secret_key_file: str | None = None) -> None:
        """CURVE: `server_public_key` encrypts; `client_secret_key_file` is this client's own secret certificate,
        for a server that lets in only listed clients (its public half in the server's curve_client_keys)."""
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        if server_public_key:  # without a certificate of its own, this client gets a throw-away key pair
            public, secret = (zmq.auth.load_certificate(client_secret_key_file) if client_secret_key_file
                              else zmq.curve_keypair())
            self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
            self.socket.curve_serverkey = server_public_key
        for camera in cameras or ("",):
            self.socket.setsockopt(zmq.SUBSCRIBE, f"{camera}/".encode() if camera else b"")
        self.socket.connect(endpoint)

    def recv(self, timeout: float | None = None) -> tuple[dict, np.ndarray] | None:
        """The next frame, or None if none came within `timeout` seconds."""
        if timeout is not None and not self.socket.poll(int(timeout * 1000)):
            return None
        return decode(self.socket.recv_multipart())

    def __iter__(self) -> Iterator[tuple[dict, np.ndarray]]:
        while True:
            yield self.recv()

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
