"""What a running service is configured with: one object, built by the CLI or by a test.

:class:`ServiceSettings` for a service (the web front, the DICOM node, or both), :class:`DicomSettings`
for the DICOM node; :class:`Peer` and :class:`Destination` are the AE titles it accepts and
sends to, :class:`DicomTls` the certificates of its TLS connections.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# An upload larger than this is refused before it is stored: a 3000 x 3000 16-bit DICOM is
# 18 MB uncompressed; 200 MB leaves room for large uncompressed studies, not for abuse.
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
# HTTP connections (fracsight.service.timeouts): a request's line and headers must be complete
# this long after its first byte; an upload may pause this long; an idle keep-alive connection
# is closed after this long; at most this many connections (and requests) at once, then 503.
HTTP_HEAD_TIMEOUT_S = 10.0
HTTP_BODY_IDLE_S = 30.0
HTTP_KEEP_ALIVE_S = 5.0
HTTP_MAX_CONNECTIONS = 200


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
    # Which copy of the model runs (fracsight.inference.model_for_precision): "int8" its 8-bit copy
    # NAME.int8.onnx, with its own card; None: fracsight.inference.DEFAULT_PRECISION (float32).
    precision: str | None = None
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # CPU for analysis: ``analysis_threads`` is the default of the two knobs after it (None: it),
    # ONNX Runtime's threads and the decoder worker processes; the rest of the CPU serves HTTP.
    analysis_threads: int = 1
    model_threads: int | None = None
    decoder_processes: int | None = None
    dicom: DicomSettings | None = None  # also run the DICOM node (``--dicom-port``)
    # The web front (worklist, viewer, API). False: the DICOM node alone (``fracsight dicom-node``);
    # host, port, token, upload size and TLS below are then unused.
    web: bool = True
    # HTTPS: the page and API over TLS with this certificate and key (PEM); None: plain HTTP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    http_head_timeout_s: float = HTTP_HEAD_TIMEOUT_S
    http_body_idle_s: float = HTTP_BODY_IDLE_S
    http_keep_alive_s: float = HTTP_KEEP_ALIVE_S
    http_max_connections: int = HTTP_MAX_CONNECTIONS
    # Retention (fracsight.service.retention): originals and display copies older than this are
    # deleted once nothing waits for them (results, worklist entries and the audit trail are kept);
    # None keeps them for ever.
    retention_s: float | None = None
    # The data folder's disk is reported (health, metrics, a log warning) once less than this is
    # free: before the DICOM node's floor (DicomSettings.min_free_bytes) refuses every instance.
    disk_warning_bytes: int = 1024 * 1024 * 1024
    # /health and /metrics of a node without the web front: a small HTTP listener (None: none).
    # With the web front they are served by the web app itself.
    health_host: str = "127.0.0.1"
    health_port: int | None = None

    def __post_init__(self) -> None:
        if self.retention_s is not None and self.retention_s <= 0:
            raise ValueError(f"retention {self.retention_s} s must be above 0 (or none: kept for ever)")
        if self.disk_warning_bytes < 0:
            raise ValueError(f"disk_warning_bytes {self.disk_warning_bytes} must be at least 0")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise ValueError(f"health port {self.health_port} is not in 0..65535")
        if self.precision is not None:
            from fracsight.inference import PRECISIONS  # here: the settings stay light to import

            if self.precision not in PRECISIONS:
                raise ValueError(f"precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if not self.web and self.dicom is None:
            raise ValueError("a service without the web front needs the DICOM node (dicom settings)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0..65535")
        if self.max_upload_bytes < 1024:
            raise ValueError(f"max_upload_bytes {self.max_upload_bytes} is below 1024")
        if min(self.http_head_timeout_s, self.http_body_idle_s, self.http_keep_alive_s) <= 0:
            raise ValueError("the HTTP timeouts must be above 0 seconds")
        if self.http_max_connections < 1:
            raise ValueError(f"http_max_connections {self.http_max_connections} must be at least 1")
        for name in ("analysis_threads", "model_threads", "decoder_processes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} {value} must be at least 1")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the API token must be at least 16 characters long")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_cert is not None:
            for what, path in (("certificate", self.tls_cert), ("private key", self.tls_key)):
                if not Path(path).is_file():
                    raise ValueError(f"TLS {what} {path}: no such file")
            _check_cert_and_key(Path(self.tls_cert), Path(self.tls_key))

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    @property
    def binds_beyond_loopback(self) -> bool:
        """True when the service is reachable from other machines (worth a warning)."""
        return _beyond_loopback(self.host)


# DICOM Application Entity titles: 1 to 16 characters of the default repertoire, no backslash,
# not all spaces (PS3.5 6.2, AE value representation).
_AET_MAX = 16


def check_aet(text: str, what: str = "AE title") -> str:
    """``text`` stripped, or ValueError naming the rule it breaks."""
    value = text.strip()
    if not value:
        raise ValueError(f"{what} {text!r} is empty; it must have 1 to {_AET_MAX} characters")
    if len(value) > _AET_MAX:
        raise ValueError(f"{what} {value!r} has {len(value)} characters; at most {_AET_MAX} are allowed")
    if "\\" in value or not value.isascii() or not value.isprintable():
        raise ValueError(f"{what} {value!r} must be printable ASCII without a backslash")
    return value


@dataclass(frozen=True)
class Peer:
    """A calling AE title the DICOM node accepts, optionally only from one host (an IP address)."""

    aet: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``AET`` or ``AET@HOST``."""
        aet, _, host = text.partition("@")
        host = host.strip() or None
        if host is not None:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"allowed peer {text!r}: host {host!r} must be an IP address") from None
        return cls(check_aet(aet, "allowed AE title"), host)

    def admits(self, aet: str, address: str) -> bool:
        return aet.strip() == self.aet and (self.host is None or _same_address(self.host, address))

    def __str__(self) -> str:
        return self.aet if self.host is None else f"{self.aet}@{self.host}"


@dataclass(frozen=True)
class Destination:
    """Where results are sent by C-STORE: ``AET@HOST:PORT``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        aet, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and host and port.isdigit()):
            raise ValueError(f"destination {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        if not 0 < int(port) < 65536:
            raise ValueError(f"destination {text!r}: port {port} is not in 1..65535")
        return cls(check_aet(aet, "destination AE title"), host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StowDestination:
    """Where results are sent by STOW-RS (PS3.18 10.5): a DICOMweb archive's base URL (``http`` or
    ``https``), e.g. ``https://pacs.example/dicom-web``; results are posted to ``URL/studies``.

    ``authorization`` is the ``Authorization`` header value (``Bearer ...`` or ``Basic ...``), read
    from a file (:meth:`auth_from_file`) so that it never shows in a process list; ``ca`` the CA
    file an https archive's certificate is checked against (None: the system's trusted CAs).
    """

    url: str
    authorization: str | None = field(default=None, repr=False)
    ca: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"STOW-RS destination {self.url!r}: expected http(s)://HOST[:PORT]/PATH")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(
                "STOW-RS destination: no credentials, query or fragment in the URL (credentials go in "
                "--forward-stow-auth FILE)"
            )
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError(f"STOW-RS destination {self.url!r}: the port is not in 1..65535") from None
        object.__setattr__(self, "url", self.url.rstrip("/"))
        if self.ca is not None and not Path(self.ca).is_file():
            raise ValueError(f"STOW-RS CA file {self.ca}: no such file")
        if self.authorization is not None and parts.scheme == "http" and _beyond_loopback(parts.hostname):
            raise ValueError("STOW-RS credentials would travel in clear text: use an https:// URL")

    @staticmethod
    def auth_from_file(path: Path) -> str:
        """The ``Authorization`` value of a file's first line: ``Bearer TOKEN``, ``Basic USER:PASSWORD``
        (encoded here) or a bare token (taken as a bearer token)."""
        try:
            line = Path(path).read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, UnicodeError, IndexError):
            raise ValueError(f"STOW-RS credentials file {path}: missing, unreadable or empty") from None
        scheme, _, value = line.partition(" ")
        if scheme.lower() == "basic" and ":" in value.strip():
            return "Basic " + base64.b64encode(value.strip().encode("utf-8")).decode("ascii")
        if scheme.lower() == "bearer" and value.strip():
            return "Bearer " + value.strip()
        if " " not in line and ":" not in line:
            return "Bearer " + line
        raise ValueError(
            f"STOW-RS credentials file {path}: expected 'Bearer TOKEN', 'Basic USER:PASSWORD' or a token"
        )

    @property
    def studies_url(self) -> str:
        return self.url + "/studies"

    def __str__(self) -> str:
        return self.url


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


@dataclass(frozen=True)
class DicomTls:
    """TLS for the DICOM node (DICOM's secure transport connection profile, PS3.15 B.1).

    ``cert`` and ``key`` (PEM) are the node's own identity, shown to modalities that send and to
    the PACS it sends results to. With ``ca``, a peer must show a certificate signed by it (mutual
    TLS): a sender without one never gets as far as the AE-title check. TLS 1.2 at least.
    """

    cert: Path
    key: Path
    ca: Path | None = None

    def __post_init__(self) -> None:
        for what, path in (("certificate", self.cert), ("private key", self.key), ("CA file", self.ca)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS {what} {path}: no such file")
        self.server_context()  # a key that does not match its certificate is refused now, not later

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context)
        if self.ca is not None:
            context.load_verify_locations(cafile=str(self.ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self) -> ssl.SSLContext:
        """For sending results: the PACS's certificate checked against ``ca`` (and its host name)."""
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context)
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        _load_cert_chain(context, Path(self.cert), Path(self.key))


def _load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        why = (exc.reason or str(exc)) if isinstance(exc, ssl.SSLError) else (exc.strerror or str(exc))
        raise ValueError(f"TLS certificate {cert} and key {key} cannot be used ({why})") from None


def _check_cert_and_key(cert: Path, key: Path) -> None:
    """Refuse at start a key that does not belong to its certificate (not at the first request)."""
    _load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)


@dataclass(frozen=True)
class DicomSettings:
    """The DICOM node: what it listens on, whom it accepts, where it sends results and how it retries.

    ``allow`` lists the calling AE titles (optionally with a host) whose associations are
    accepted; every other association is rejected. With no ``allow`` given, the node accepts
    only the ``forward`` destination's AE title (from its host): the PACS that receives the
    results is usually the one that sends the images. ``forward`` None keeps results in the
    store only (the worklist shows them; nothing is sent). ``forward`` is a C-STORE
    :class:`Destination` or a DICOMweb archive (:class:`StowDestination`, results sent by STOW-RS;
    ``allow`` must then be given).
    """

    port: int = 11112
    host: str = "127.0.0.1"
    aet: str = "FRACSIGHT"
    allow: tuple[Peer, ...] = ()
    forward: Destination | StowDestination | None = None
    # An instance is refused with "out of resources" rather than stored when the data folder's
    # disk would keep less than this free: the store's own database must still be able to commit.
    min_free_bytes: int = 256 * 1024 * 1024
    # Results are sent again after a failure after retry_base_s, doubling up to retry_max_s.
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    # A study's results wait for the association that brought its images to end, or for this
    # long without a new image in it (a modality that keeps its association open).
    batch_idle_s: float = 10.0
    # A study is complete, and its results (one SR for the study) are made, once no new image of it
    # has arrived for this long; an image arriving later makes a new version of the study's SR.
    study_quiet_s: float = 10.0
    sc_max_side: int = 1024  # the burned-in Secondary Capture's longer side, px
    # TLS for associations the node accepts; ``forward_tls`` sends results over TLS too.
    tls: DicomTls | None = None
    forward_tls: bool = False
    # pynetdicom's timeouts (seconds): an association's negotiation (ACSE), a reply to a message
    # (DIMSE), a silent connection (network); and how many associations the node serves at once.
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    max_associations: int = 16
    # The largest PDU the node receives (announced at association): a 7 MB radiograph comes in 55
    # PDUs of 128 KiB rather than 430 of pynetdicom's 16 KiB default, each handled in Python (13 %
    # less CPU per image under load). 131072 is the largest DCMTK and Orthanc send.
    max_pdu_bytes: int = 131072

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"DICOM port {self.port} is not in 0..65535")
        for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)} must be above 0 seconds")
        if self.max_associations < 1:
            raise ValueError(f"max_associations {self.max_associations} must be at least 1")
        if not 4096 <= self.max_pdu_bytes <= 2**24:
            raise ValueError(f"max_pdu_bytes {self.max_pdu_bytes} must be in 4096..16777216")
        object.__setattr__(self, "aet", check_aet(self.aet, "the node's AE title"))
        if not self.allow and isinstance(self.forward, Destination):
            object.__setattr__(self, "allow", (Peer(self.forward.aet, _ip_or_none(self.forward.host)),))
        if not self.allow:
            raise ValueError(
                "no calling AE title is allowed to send: give --allow AET[,AET@HOST...] (or --forward, "
                "whose AE title is then allowed)"
            )
        if self.retry_base_s <= 0 or self.retry_max_s < self.retry_base_s:
            raise ValueError(f"retry times {self.retry_base_s} / {self.retry_max_s} s: need 0 < base <= max")
        c_store = isinstance(self.forward, Destination)
        if self.forward_tls and (self.tls is None or self.tls.ca is None or not c_store):
            raise ValueError(
                "--forward-tls needs --forward and --tls-cert, --tls-key and --tls-ca (to check the PACS)"
            )
        quiet = min(self.batch_idle_s, self.study_quiet_s)
        if self.min_free_bytes < 0 or quiet <= 0 or self.sc_max_side < 64:
            raise ValueError(
                "min_free_bytes >= 0, batch_idle_s > 0, study_quiet_s > 0 and sc_max_side >= 64 are required"
            )

    @property
    def binds_beyond_loopback(self) -> bool:
        return _beyond_loopback(self.host)

    def admits(self, aet: str, address: str) -> bool:
        return any(peer.admits(aet, address) for peer in self.allow)


def _ip_or_none(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:  # a host name: the AE title alone is checked
        return None


def _beyond_loopback(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it resolves beyond this machine
        return True


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LogSettings:
    """Where the service's log lines go and how they look (fracsight.service.logs).

    ``file`` None: standard error; else a file rotated at ``max_bytes`` with ``backups`` kept.
    ``network_level`` is pynetdicom's and pydicom's level: above info, since they log data sets
    (patient data) at debug and every message at info.
    """

    format: str = "text"
    level: str = "info"
    file: Path | None = None
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    network_level: str = "warning"

    def __post_init__(self) -> None:
        if self.format not in LOG_FORMATS:
            raise ValueError(f"log format {self.format!r}: expected one of {', '.join(LOG_FORMATS)}")
        for name in ("level", "network_level"):
            if getattr(self, name) not in LOG_LEVELS:
                given = getattr(self, name)
                raise ValueError(f"log {name} {given!r}: expected one of {', '.join(LOG_LEVELS)}")
        if self.max_bytes < 1024 or self.backups < 0:
            raise ValueError("log max_bytes must be at least 1024 and backups at least 0")
