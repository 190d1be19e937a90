"""Kiln's web UI launcher: `python app.py [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--jobs-dir DIR]
[--max-upload-mb 200] [--allowed-host NAME ...] [--insecure-no-auth]`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Kiln: a local Stable Diffusion trainer")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", metavar="USER:PASS", help="require this login (failed logins are slowed down)")
    p.add_argument("--jobs-dir", type=Path, default=Path("jobs"),
                   help="where job folders live; datasets/ and presets-user/ are made beside it")
    p.add_argument("--share", action="store_true", help="open a public Gradio share link (off by default)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, metavar="MB",
                   help="largest file a browser may upload (default: 200)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also accept requests addressed to this host name (a reverse proxy's or this machine's "
                        "name; repeatable). Others are refused, so no other site's page can drive Kiln")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --host beyond this machine or --share without --auth (anyone who reaches it "
                        "controls Kiln)")
    args = p.parse_args(argv)
    if args.auth is not None:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            p.error("--auth takes USER:PASS (both non-empty)")
    for name in args.allowed_host:
        if not name.strip() or any(ch in name for ch in "/\\@ ") or any(ord(ch) < 33 for ch in name):
            p.error(f"--allowed-host {name!r} must be a host name or address (no scheme, path or spaces)")
    if args.max_upload_mb <= 0:
        p.error(f"--max-upload-mb {args.max_upload_mb:g} must be more than 0")
    exposed = "--share" if args.share else f"--host {args.host}" if args.host not in LOOPBACK_HOSTS else None
    if exposed and not args.auth and not args.insecure_no_auth:
        p.error(f"{exposed} without --auth is refused: anyone who can reach this machine could start jobs, read "
                "your datasets and write files. Add --auth USER:PASS, or --insecure-no-auth if you really mean it.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Offline: no analytics calls home (set before gradio is imported, which reads it).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if (args.share or args.host not in LOOPBACK_HOSTS) and not args.auth:
        print("kiln: WARNING: --insecure-no-auth: this Kiln is reachable beyond this machine without a login.",
              file=sys.stderr, flush=True)
    from ui import launch_app

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    launch_app(args.jobs_dir, host=args.host, port=args.port, auth=auth, share=args.share,
               max_upload_mb=args.max_upload_mb, allowed_hosts=args.allowed_host)


if __name__ == "__main__":
    main()
