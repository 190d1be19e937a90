"""Kiln's web UI launcher: `python app.py [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--jobs-dir DIR]`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Kiln: a local Stable Diffusion trainer")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--jobs-dir", type=Path, default=Path("jobs"), help="where job folders live")
    p.add_argument("--share", action="store_true", help="open a public Gradio share link (off by default)")
    args = p.parse_args(argv)
    if args.auth and ":" not in args.auth:
        p.error("--auth takes USER:PASS")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.auth:
        print(f"kiln: warning: listening on {args.host} without --auth: anyone who can reach this machine can "
              "start jobs and read your datasets", file=sys.stderr)
    from ui import build_app

    app = build_app(jobs_dir=args.jobs_dir)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    app.launch(server_name=args.host, server_port=args.port, auth=auth, share=args.share)


if __name__ == "__main__":
    main()
