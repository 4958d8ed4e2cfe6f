"""``fracsight serve``: the clinician's worklist and viewer over a REST API, with a persistent store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fracsight.cli.dicom_node import (
    DEFAULTS,
    FILE_KEYS,
    add_dicom_options,
    add_operations_options,
    check_dicom_extra,
    data_folder,
    describe,
    dicom_settings,
    log_settings,
    operations,
    resolve,
)
from fracsight.cli.options import a_port, add_precision_option, add_service_cpu_options, at_least_one

if TYPE_CHECKING:
    from fracsight.service.settings import ServiceSettings

# The DICOM node's options in ``serve`` carry this prefix where the web side has one of the same name.
DICOM_PREFIX = "dicom-"
# The configuration file's keys for ``serve``: the node's, its port as --dicom-port, and [web].
SERVE_KEYS = {
    **FILE_KEYS,
    ("dicom", "port"): "dicom_port",
    ("web", "host"): "host",
    ("web", "port"): "port",
    ("web", "tls_cert"): "tls_cert",
    ("web", "tls_key"): "tls_key",
    ("web", "max_upload_mb"): "max_upload_mb",
}
SERVE_DEFAULTS = {**DEFAULTS, "host": "127.0.0.1", "port": 8000, "max_upload_mb": 200}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the web worklist and viewer (REST API, persistent store, analysis queue)",
        description="Serve the worklist and viewer at http://HOST:PORT/. Uploads and results are kept "
        "in DIR (SQLite + files); every API call but /api/health needs the bearer token, taken from "
        "$FRACSIGHT_API_TOKEN or made at first start in DIR/api-token (printed once).",
    )
    p.add_argument("--host", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=a_port, help="port to listen on (default 8000)")
    p.add_argument(
        "--data", type=Path, metavar="DIR", help="folder for the store and files (or data in --config)"
    )
    p.add_argument("--model", type=Path, help="ONNX model (default: the one shipped in the package)")
    add_precision_option(p)
    p.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="serve HTTPS with this certificate (with --tls-key): needed beyond loopback, where the "
        "API token would otherwise travel in clear text",
    )
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--max-upload-mb", type=at_least_one, help="largest upload accepted, in MB (default 200)"
    )
    p.add_argument(
        "--dicom-port",
        type=a_port,
        metavar="PORT",
        help="also run the DICOM node on this port (the options below; see `fracsight dicom-node`)",
    )
    add_dicom_options(p, prefix=DICOM_PREFIX)
    add_service_cpu_options(p, "the other cores keep the web side responsive")
    add_operations_options(p, health=False)
    p.set_defaults(func=run, analysis_threads=None)


def service_settings(args: argparse.Namespace) -> ServiceSettings:
    """The parsed options as settings: the web side's TLS from --tls-*, the node's from --dicom-tls-*."""
    from fracsight.service.settings import ServiceSettings

    resolve(args, SERVE_KEYS, SERVE_DEFAULTS)
    dicom = None
    node_only = (args.forward, args.dicom_allow, args.dicom_tls_cert, args.dicom_tls_key, args.dicom_tls_ca)
    node_only += (args.forward_stow,)
    if not args.dicom_port and (any(node_only) or args.forward_tls):
        raise ValueError(
            "--forward, --dicom-allow and --dicom-tls-* configure the DICOM node: give --dicom-port too"
        )
    if args.dicom_port:
        check_dicom_extra()
        dicom = dicom_settings(args, args.dicom_port, prefix=DICOM_PREFIX)
    return ServiceSettings(
        **{**operations(args), "health_port": None},  # /health and /metrics are on the web app
        data_dir=data_folder(args),
        host=args.host,
        port=args.port,
        model=args.model,
        precision=args.precision,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        analysis_threads=args.analysis_threads,
        model_threads=args.model_threads,
        decoder_processes=args.decoder_processes,
        dicom=dicom,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"serve needs the 'serve' extra: pip install 'fracsight[serve]' ({exc})") from exc
    from fracsight.service.logs import configure_logging
    from fracsight.service.server import Service

    settings = service_settings(args)
    configure_logging(log_settings(args))
    dicom = settings.dicom
    service = Service(settings)
    if service.token_created:
        print(f"API token (shown once; kept in {args.data / 'api-token'}): {service.token}", file=sys.stderr)
    if settings.binds_beyond_loopback:
        clear = (
            ""
            if settings.tls_cert
            else " over plain HTTP: the API token travels in clear text (give --tls-cert)"
        )
        print(f"warning: listening on {args.host}: reachable from other machines{clear}", file=sys.stderr)
    print(
        f"fracsight serve: {settings.scheme}://{args.host}:{args.port}/ (data in {settings.data_dir}; "
        "/health and /metrics for monitoring); Ctrl-C stops",
        file=sys.stderr,
    )
    if dicom is not None:
        print(describe(dicom), file=sys.stderr)
    service.run()
    return 0
