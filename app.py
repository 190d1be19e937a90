"""Kiln's web UI launcher: `python app.py [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--jobs-dir DIR]`."""
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
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--jobs-dir", type=Path, default=Path("jobs"),
                   help="where job folders live; datasets/ and presets-user/ are made beside it")
    p.add_argument("--share", action="store_true", help="open a public Gradio share link (off by default)")
    args = p.parse_args(argv)
    if args.auth is not None:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            p.error("--auth takes USER:PASS (both non-empty)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Offline: no analytics calls home (set before gradio is imported, which reads it).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if args.host not in LOOPBACK_HOSTS and not args.auth:
        print(f"kiln: WARNING: listening on {args.host} without --auth: anyone who can reach this machine can "
              "start jobs and read your datasets. Add --auth USER:PASS.", file=sys.stderr, flush=True)
    if args.share and not args.auth:
        print("kiln: WARNING: --share makes a public link; without --auth anyone with it controls Kiln.",
              file=sys.stderr, flush=True)
    from ui import launch_app

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    launch_app(args.jobs_dir, host=args.host, port=args.port, auth=auth, share=args.share)


if __name__ == "__main__":
    main()
