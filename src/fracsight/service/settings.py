"""What a running service is configured with: one object, built by the CLI or by a test."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

# An upload larger than this is refused before it is stored: a 3000 x 3000 16-bit DICOM is
# 18 MB uncompressed; 200 MB leaves room for large uncompressed studies, not for abuse.
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class ServiceSettings:
    """Where the service keeps its data, what it listens on and who it lets in.

    ``token`` is the bearer token every API call but health must carry; None means "read
    ``DIR/api-token``, creating it at first start" (:func:`fracsight.service.auth.load_token`).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    model: Path | None = None  # None: the model shipped in the package
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    analysis_threads: int = 1  # ONNX Runtime threads: the rest of the CPU serves HTTP

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0..65535")
        if self.max_upload_bytes < 1024:
            raise ValueError(f"max_upload_bytes {self.max_upload_bytes} is below 1024")
        if self.analysis_threads < 1:
            raise ValueError(f"analysis_threads {self.analysis_threads} must be at least 1")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the API token must be at least 16 characters long")

    @property
    def binds_beyond_loopback(self) -> bool:
        """True when the service is reachable from other machines (worth a warning)."""
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: assume it resolves beyond this machine
            return True
