"""``polypsam serve``: the engine protocol over HTTP for clients without torch (Slicer on a laptop).

Binds 127.0.0.1 by default (no token needed there unless one is given). The token comes from
``$POLYPSAM_TOKEN`` or a file readable by the user only (``--token-file``), never from the command
line by default: ``--token T`` still works but warns, as every user can read it in the process
list. Any other address requires a token: if none is given, one is generated once and stored with
user-only permissions (0600) in the user config folder; later runs reuse the stored one. A
generated token is printed only to a terminal: a redirected log gets the file's path instead.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

from . import options
from .options import add_precision_option


LOOPBACK_NAMES = ("localhost",)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve SAM2 to PolypSAM clients over HTTP (the Slicer module, --server)",
        description="Run SAM2 on this machine's GPU/CPU for clients that connect over HTTP (the"
                    " Slicer module's server engine, or 'polypsam segment/propagate/track"
                    " --server URL'). Binds 127.0.0.1 unless --host says otherwise; any other"
                    " bind requires a token.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument("--checkpoint", default="sam2.1_hiera_tiny",
                   help="registry name or a .pt in the official SAM2 format (default: %(default)s)")
    p.add_argument("--config", help="SAM2 config (required for a custom .pt)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, help="model input size")
    add_precision_option(p)
    p.add_argument("--no-download", action="store_true", help="never download weights")
    token = p.add_argument_group(
        "token", "The token clients must send: $POLYPSAM_TOKEN, --token-file or --token. Without"
                 " one, a non-loopback bind uses a token generated once and stored (mode 0600)"
                 " in the user config folder; 127.0.0.1 needs none.")
    options.add_token_options(token, "the token clients must send")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=int, default=256,
                        help="largest request body in MiB (default: %(default)s)")
    limits.add_argument("--memory-mb", type=int, default=4096,
                        help="memory for uploaded arrays of all sessions in MiB, least recently"
                             " used dropped beyond it (default: %(default)s)")
    limits.add_argument("--max-sessions", type=int, default=16,
                        help="sessions kept at once (default: %(default)s)")
    limits.add_argument("--idle-timeout", type=float, default=3600.0,
                        help="seconds after which an unused session is dropped"
                             " (default: %(default)s)")
    limits.add_argument("--max-jobs", type=int, default=4,
                        help="jobs queued or running at once; more are refused with 429"
                             " (default: %(default)s)")
    p.set_defaults(handler=run_serve)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_dir() -> Path:
    if os.environ.get("POLYPSAM_CONFIG_DIR"):
        return Path(os.environ["POLYPSAM_CONFIG_DIR"])
    import platformdirs

    return Path(platformdirs.user_config_dir("polypsam"))


def stored_token(create: bool = True) -> tuple[str, Path, bool]:
    """``(token, file, created)``: the stored server token, created (0600) when absent."""
    path = config_dir() / "server-token"
    if path.is_file():
        return path.read_text().strip(), path, False
    if not create:
        return "", path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path, True


def serve_token(args: argparse.Namespace, out: TextIO) -> str:
    """The token clients must send (``""``: none), saying on ``out`` where a stored one is.

    A newly generated token is written to ``out`` only when it is a terminal: a redirected log
    (nohup, a service) gets the token file's path, never the token.
    """
    token = options.token_from_args(args, "polypsam serve")
    if token or is_loopback(args.host):
        return token
    token, path, created = stored_token()
    if created and out.isatty():
        print(f"polypsam serve: token (shown once; stored in {path}, mode 0600):\n  {token}",
              file=out)
    elif created:
        print(f"polypsam serve: a token was generated and stored in {path} (mode 0600); it is"
              " not printed because the output is not a terminal", file=out)
    else:
        print(f"polypsam serve: clients need the token stored in {path}", file=out)
    out.flush()
    return token


def run_serve(args: argparse.Namespace) -> int:
    from ..engines import create_engine, settings_for
    from ..server.app import MiB, ServerConfig, create_app

    token = serve_token(args, sys.stdout)
    config = ServerConfig(
        token=token, max_upload_bytes=args.max_upload_mb * MiB,
        max_array_bytes=args.max_upload_mb * MiB * 4, memory_bytes=args.memory_mb * MiB,
        max_sessions=args.max_sessions, idle_timeout=args.idle_timeout, max_jobs=args.max_jobs)
    settings = settings_for(args.checkpoint, args.config, device=args.device,
                            image_size=args.image_size, precision=args.precision)
    engine = create_engine(settings, allow_download=not args.no_download)
    app = create_app(engine, config)
    import uvicorn

    info = engine.info
    print(f"polypsam serve: {info.model or info.checkpoint} on {info.device} ({info.precision}),"
          f" image size {info.image_size}, at http://{args.host}:{args.port}"
          + (" (token required)" if token else " (no token: loopback only)"), flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    timeout_keep_alive=30)
    finally:
        engine.close()
    return 0
