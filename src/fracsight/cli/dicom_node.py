"""``fracsight dicom-node``: a DICOM node that receives radiographs and sends its results back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fracsight.cli.options import (
    a_number,
    a_port,
    a_whole_number,
    add_precision_option,
    add_service_cpu_options,
    one_of,
)
from fracsight.service.settings import LOG_FORMATS


def _peers(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_dicom_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options the node takes, shared by ``dicom-node`` and ``serve`` (there with ``prefix``
    "dicom-" where the web side has an option of the same name)."""
    p.add_argument(
        f"--{prefix}aet",
        dest="dicom_aet",
        metavar="AET",
        help="the DICOM node's AE title (default FRACSIGHT)",
    )
    p.add_argument(
        f"--{prefix}host",
        dest="dicom_host",
        metavar="HOST",
        help="address the DICOM node binds (default: loopback only)",
    )
    p.add_argument(
        f"--{prefix}allow",
        dest="dicom_allow",
        type=_peers,
        metavar="AET[@HOST][,...]",
        help="calling AE titles allowed to send, each optionally only from one IP address "
        "(default: the --forward destination's AE title and host)",
    )
    p.add_argument(
        "--forward",
        metavar="AET@HOST:PORT",
        help="where results (Secondary Capture, SR, presentation state) are sent by C-STORE",
    )
    p.add_argument(
        "--forward-stow",
        metavar="URL",
        help="send results by STOW-RS to this DICOMweb archive instead (its base URL, http(s)://.../"
        "dicom-web: results go to URL/studies); needs --allow",
    )
    p.add_argument(
        "--forward-stow-auth",
        type=Path,
        metavar="FILE",
        help="credentials for --forward-stow: a file whose first line is 'Bearer TOKEN' or "
        "'Basic USER:PASSWORD'",
    )
    p.add_argument(
        "--forward-stow-ca", type=Path, metavar="PEM", help="CA an https --forward-stow is checked against"
    )
    # dicom_tls_*, never tls_*: in ``serve`` the web side's --tls-cert/--tls-key are separate options.
    p.add_argument(
        f"--{prefix}tls-cert",
        dest="dicom_tls_cert",
        type=Path,
        metavar="PEM",
        help=f"the node's TLS certificate: associations are accepted over TLS only (with --{prefix}tls-key)",
    )
    p.add_argument(
        f"--{prefix}tls-key", dest="dicom_tls_key", type=Path, metavar="PEM", help="its private key"
    )
    p.add_argument(
        f"--{prefix}tls-ca",
        dest="dicom_tls_ca",
        type=Path,
        metavar="PEM",
        help="accept only senders whose certificate this CA signed (mutual TLS); with --forward-tls "
        "also what the PACS's certificate is checked against",
    )
    p.add_argument(
        "--forward-tls",
        action="store_true",
        default=None,
        help=f"send results to --forward over TLS (needs --{prefix}tls-cert, --{prefix}tls-key and "
        f"--{prefix}tls-ca)",
    )
    p.add_argument(
        "--retry-max-s",
        type=a_number(low=0, open_low=True),
        metavar="S",
        help="longest wait between two tries of an undelivered result (default 300 s)",
    )
    p.add_argument(
        "--min-free-mb",
        type=a_whole_number(0),
        metavar="MB",
        help="refuse instances (Out of Resources) when the disk would keep less free (default 256)",
    )


# Where each key of the configuration file (fracsight.service.config) goes among the parsed
# options, and the default of each option the command line and the file leave out: the file's
# value is used only where the flag was not given (flags win).
FILE_KEYS = {
    ("", "data"): "data",
    ("", "model"): "model",
    ("", "precision"): "precision",
    ("", "analysis_threads"): "analysis_threads",
    ("", "model_threads"): "model_threads",
    ("", "decoder_processes"): "decoder_processes",
    ("dicom", "host"): "dicom_host",
    ("dicom", "aet"): "dicom_aet",
    ("dicom", "allow"): "dicom_allow",
    ("dicom", "forward"): "forward",
    ("dicom", "tls_cert"): "dicom_tls_cert",
    ("dicom", "tls_key"): "dicom_tls_key",
    ("dicom", "tls_ca"): "dicom_tls_ca",
    ("dicom", "forward_tls"): "forward_tls",
    ("dicom", "retry_max_s"): "retry_max_s",
    ("dicom", "min_free_mb"): "min_free_mb",
    ("dicom", "acse_timeout_s"): "acse_timeout_s",
    ("dicom", "dimse_timeout_s"): "dimse_timeout_s",
    ("dicom", "network_timeout_s"): "network_timeout_s",
    ("dicom", "max_associations"): "max_associations",
    ("dicom", "max_pdu_bytes"): "max_pdu_bytes",
    ("dicom", "study_quiet_s"): "study_quiet_s",
    ("retention", "keep_images_days"): "keep_images_days",
    ("retention", "disk_warning_mb"): "disk_warning_mb",
    ("logging", "format"): "log_format",
    ("logging", "level"): "log_level",
    ("logging", "file"): "log_file",
    ("logging", "max_mb"): "log_max_mb",
    ("logging", "backups"): "log_backups",
    ("logging", "network_level"): "log_network_level",
    ("health", "host"): "health_host",
    ("health", "port"): "health_port",
}
DEFAULTS = {
    "analysis_threads": 1,
    "dicom_host": "127.0.0.1",
    "dicom_aet": "FRACSIGHT",
    "dicom_allow": [],
    "forward_tls": False,
    "retry_max_s": 300.0,
    "min_free_mb": 256,
    "acse_timeout_s": 30.0,
    "dimse_timeout_s": 60.0,
    "network_timeout_s": 120.0,
    "max_associations": 16,
    "max_pdu_bytes": 131072,
    "study_quiet_s": 10.0,
    "disk_warning_mb": 1024,
    "log_format": "text",
    "log_level": "info",
    "log_max_mb": 10,
    "log_backups": 5,
    "log_network_level": "warning",
    "health_host": "127.0.0.1",
}
NODE_KEYS = {**FILE_KEYS, ("dicom", "port"): "port"}
NODE_DEFAULTS = {**DEFAULTS, "port": 11112}


def add_operations_options(p: argparse.ArgumentParser, health: bool) -> None:
    """``--config``, logging and retention, shared by ``dicom-node`` and ``serve``; ``health``: the
    node's own /health and /metrics listener (``serve`` has them on its web app)."""
    p.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="site configuration file (see deploy/fracsight.toml): every option here and more "
        "(timeouts, association limit, retention, logging); options given here win over it",
    )
    p.add_argument(
        "--log-format",
        type=one_of(LOG_FORMATS, "log format"),
        metavar="text|json",
        help="text (default) or json: one JSON object per line",
    )
    p.add_argument(
        "--log-file", type=Path, metavar="FILE", help="log to this file, rotated (default: stderr)"
    )
    p.add_argument(
        "--keep-images-days",
        type=a_number(low=0, open_low=True),
        metavar="DAYS",
        help="delete originals and display copies this long after receipt, once their results are "
        "delivered (results, worklist and audit trail are kept; default: keep for ever)",
    )
    if health:
        p.add_argument(
            "--health-port",
            type=a_port,
            metavar="PORT",
            help="serve /health and Prometheus /metrics on this port (on --health-host, default loopback)",
        )
        p.add_argument("--health-host", metavar="HOST", help="address of --health-port (default 127.0.0.1)")


def resolve(args: argparse.Namespace, keys: dict, defaults: dict) -> argparse.Namespace:
    """Fill what the command line left out from ``--config``'s file, then from ``defaults``
    (once; a second call changes nothing)."""
    if getattr(args, "_resolved", False):
        return args
    from fracsight.service.config import load

    values = load(args.config) if getattr(args, "config", None) else {}
    for (section, key), dest in keys.items():
        if getattr(args, dest, None) is None:
            value = values.get(section, {}).get(key)
            setattr(args, dest, value if value is not None else defaults.get(dest))
    args._resolved = True
    return args


def dicom_settings(args: argparse.Namespace, port: int | None = None, prefix: str = ""):
    """The node's settings from the options of :func:`add_dicom_options` (``prefix`` as given there)
    and the configuration file; ``port`` None: the resolved ``--port``."""
    from fracsight.service.settings import Destination, DicomSettings, DicomTls, Peer, StowDestination

    resolve(args, NODE_KEYS, NODE_DEFAULTS)
    port = args.port if port is None else port
    cert, key, ca = args.dicom_tls_cert, args.dicom_tls_key, args.dicom_tls_ca
    if bool(cert) != bool(key) or (ca and not cert):
        raise ValueError(
            f"--{prefix}tls-cert and --{prefix}tls-key go together (and --{prefix}tls-ca needs them)"
        )
    tls = DicomTls(cert, key, ca) if cert else None
    forward = Destination.parse(args.forward) if args.forward else None
    if args.forward_stow:
        if forward is not None:
            raise ValueError("--forward and --forward-stow: give one destination for the results")
        auth = args.forward_stow_auth
        forward = StowDestination(
            args.forward_stow, StowDestination.auth_from_file(auth) if auth else None, args.forward_stow_ca
        )
    elif args.forward_stow_auth or args.forward_stow_ca:
        raise ValueError("--forward-stow-auth and --forward-stow-ca go with --forward-stow")
    return DicomSettings(
        port=port,
        host=args.dicom_host,
        aet=args.dicom_aet,
        allow=tuple(Peer.parse(p) for p in args.dicom_allow),
        forward=forward,
        retry_base_s=min(2.0, args.retry_max_s),
        retry_max_s=args.retry_max_s,
        min_free_bytes=args.min_free_mb * 1024 * 1024,
        tls=tls,
        forward_tls=args.forward_tls,
        acse_timeout_s=args.acse_timeout_s,
        dimse_timeout_s=args.dimse_timeout_s,
        network_timeout_s=args.network_timeout_s,
        max_associations=args.max_associations,
        max_pdu_bytes=args.max_pdu_bytes,
        study_quiet_s=args.study_quiet_s,
    )


def log_settings(args: argparse.Namespace):
    """Logging from the options and the file (resolved before); ``-v`` means debug."""
    from fracsight.service.settings import LogSettings

    return LogSettings(
        format=args.log_format,
        level="debug" if getattr(args, "verbose", False) else args.log_level,
        file=args.log_file,
        max_bytes=args.log_max_mb * 1024 * 1024,
        backups=args.log_backups,
        network_level=args.log_network_level,
    )


def operations(args: argparse.Namespace) -> dict:
    """The ServiceSettings fields of retention, the disk warning and the health listener."""
    days = args.keep_images_days
    return {
        "retention_s": days * 86400.0 if days is not None else None,
        "disk_warning_bytes": args.disk_warning_mb * 1024 * 1024,
        "health_host": args.health_host,
        "health_port": getattr(args, "health_port", None),
    }


def data_folder(args: argparse.Namespace) -> Path:
    if args.data is None:
        raise ValueError("no data folder: give --data DIR (or data = \"DIR\" in the --config file)")
    return Path(args.data)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dicom-node",
        help="run a DICOM node: receive radiographs (C-STORE), send results back to the PACS",
        description="Receive radiographs over DICOM (Storage SCP) from the allowed AE titles, keep them in "
        "DIR, analyse each once, and send to --forward a Secondary Capture with the heat map, a structured "
        "report (TID 1500) and, for fracture and doubt, a presentation state. Results that cannot be "
        "delivered are kept and sent again; --resend sends them now and exits.",
    )
    p.add_argument(
        "--data", type=Path, metavar="DIR", help="folder for the store and files (or data in --config)"
    )
    p.add_argument("--port", type=a_port, help="DICOM port to listen on (default 11112)")
    add_dicom_options(p)
    p.add_argument("--model", type=Path, help="ONNX model (default: the one shipped in the package)")
    add_precision_option(p)
    add_service_cpu_options(p, "the rest receive and send")
    p.add_argument(
        "--resend",
        action="store_true",
        help="make again the results that could not be made, send every undelivered result now (also "
        "those the destination refused), then exit",
    )
    add_operations_options(p, health=True)
    p.set_defaults(func=run, analysis_threads=None)


def check_dicom_extra() -> None:
    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"the DICOM node needs the 'dicom' extra: pip install 'fracsight[dicom]' ({exc})"
        ) from exc


def describe(settings) -> str:
    """One line on what the node listens on, whom it accepts and where results go."""
    allowed = ", ".join(str(p) for p in settings.allow)
    target = settings.forward or "nowhere (no --forward: results stay in the store)"
    unencrypted = settings.tls is None
    warning = (
        f"warning: the DICOM node listens on {settings.host}: reachable from other machines"
        + (", unencrypted (give --tls-cert and --tls-key)" if unencrypted else "")
        + "\n"
        if settings.binds_beyond_loopback
        else ""
    )
    if settings.tls is None:
        secured = ""
    elif settings.tls.ca is None:
        secured = " over TLS"
    else:
        secured = " over TLS from certificates of the given CA"
    over = " over TLS" if settings.forward_tls else ""
    return (
        f"{warning}DICOM node {settings.aet} on {settings.host}:{settings.port}{secured}, accepting "
        f"{allowed}; results to {target}{over}"
    )


def run(args: argparse.Namespace) -> int:
    check_dicom_extra()
    from fracsight.service.logs import configure_logging

    settings = dicom_settings(args)
    args.data = data_folder(args)
    configure_logging(log_settings(args))
    if args.resend:
        return _resend(args, settings)
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings

    service = Service(
        ServiceSettings(
            **operations(args),
            data_dir=args.data,
            model=args.model,
            precision=args.precision,
            analysis_threads=args.analysis_threads,
            model_threads=args.model_threads,
            decoder_processes=args.decoder_processes,
            dicom=settings,
            web=False,
        )
    )
    health = service.health
    checks = f"; /health and /metrics on http://{args.health_host}:{health.port}" if health else ""
    print(
        f"fracsight dicom-node: {describe(settings)} (data in {args.data}){checks}; Ctrl-C stops",
        file=sys.stderr,
    )
    service.run()
    return 0


def _resend(args: argparse.Namespace, settings) -> int:
    from fracsight.inference import Analyser
    from fracsight.service.results_stage import remake_failed
    from fracsight.service.sender import resend
    from fracsight.service.store import SqliteStore

    if not (args.data / "fracsight.db").exists():
        raise FileNotFoundError(f"{args.data}: no fracsight store here")
    store = SqliteStore(args.data)
    remade = remake_failed(
        store,
        settings,
        lambda: Analyser(args.model, threads=args.analysis_threads, batch_size=1, precision=args.precision),
    )
    if remade:
        print(f"made again the results of {remade} image(s) that could not have them", file=sys.stderr)
    counts = resend(store, settings)
    undelivered = counts["pending"] + counts["rejected"] + counts["sending"]
    print(f"sent {counts['sent']} results in all; {undelivered} not delivered", file=sys.stderr)
    return 0 if undelivered == 0 else 1
