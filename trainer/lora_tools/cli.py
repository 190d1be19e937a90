"""`python -m trainer lora inspect|resize|merge|extract ...`: the LoRA tools on the command line."""
from __future__ import annotations

import sys
from pathlib import Path


def add_lora_parser(verbs) -> None:
    lora = verbs.add_parser("lora", help="inspect, resize, merge or extract LoRA files")
    tools = lora.add_subparsers(dest="tool", required=True)

    inspect = tools.add_parser("inspect", help="type, architecture, rank/alpha per module, metadata, A1111 hashes")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--base", type=Path, help="a single-file checkpoint: list the modules it would not load")

    resize = tools.add_parser("resize", help="a lower-rank LoRA by SVD of each module's change")
    resize.add_argument("file", type=Path)
    resize.add_argument("--out", type=Path, required=True)
    resize.add_argument("--rank", type=int, help="the new rank (with --dynamic: the largest rank allowed)")
    resize.add_argument("--dynamic", nargs=2, metavar=("METHOD", "VALUE"),
                        help="sv_ratio R (keep s >= s_max / R), sv_fro F or sv_cumulative F (keep that fraction)")
    resize.add_argument("--force", action="store_true", help="replace --out if it exists")

    merge = tools.add_parser("merge", help="bake LoRAs into a checkpoint (--into), or merge them into one LoRA")
    merge.add_argument("loras", type=Path, nargs="+")
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("--into", type=Path, help="a single-file .safetensors checkpoint to bake the LoRAs into")
    merge.add_argument("--weights", help="comma-separated strength per LoRA (default 1 each)")
    merge.add_argument("--rank", type=int, help="rank of the merged LoRA (without --into; default: the largest)")
    merge.add_argument("--force", action="store_true", help="replace --out if it exists")

    extract = tools.add_parser("extract", help="a LoRA from the difference of two checkpoints")
    extract.add_argument("--base", type=Path, required=True)
    extract.add_argument("--tuned", type=Path, required=True)
    extract.add_argument("--rank", type=int, required=True)
    extract.add_argument("--out", type=Path, required=True)
    extract.add_argument("--force", action="store_true", help="replace --out if it exists")


def cmd_lora(args) -> int:
    from ..atomic import DiskFullError
    from ..models.errors import ModelError
    from . import tools

    try:
        _check_numbers_and_output(args)
        if args.tool == "inspect":
            print(tools.inspect(args.file, args.base))
            return 0
        if args.tool == "resize":
            dynamic, value = _dynamic(args)
            if args.rank is None and dynamic is None:
                return _fail("lora resize: give --rank N or --dynamic METHOD VALUE")
            out, kept = tools.resize(args.file, args.out, args.rank, dynamic, value, args.force)
        elif args.tool == "merge":
            weights = _weights(args.weights, len(args.loras))
            if args.into:
                out, changed = tools.merge_into_checkpoint(args.loras, weights, args.into, args.out, args.force)
                print(f"kiln: merged {len(args.loras)} LoRA(s) into {changed} weights: {out}")
                return 0
            rank = args.rank or _largest_rank(args.loras)
            out, kept = tools.merge_loras(args.loras, weights, args.out, rank, args.force)
        else:
            out, kept = tools.extract(args.base, args.tuned, args.rank, args.out, args.force)
    except (ModelError, FileExistsError, ValueError, DiskFullError) as e:
        return _fail(str(e))
    except OSError as e:  # a path the OS refuses, or an output that could not be written after all
        return _fail(f"lora {args.tool}: {str(e.filename or '')[:80]}: {e.strerror or e}")
    for k in kept:
        print(f"  {k.module}: rank {k.rank}, kept {100 * k.energy:.4f}% of the change's energy")
    worst = min(kept, key=lambda k: k.energy)
    print(f"kiln: wrote {out} ({len(kept)} modules; lowest kept energy {100 * worst.energy:.4f}% in {worst.module})")
    return 0


def _check_numbers_and_output(args) -> None:
    """Every number and the output path, before any file is read (issue 25: rank 0 quietly became 1, a NaN
    ratio was accepted, --out naming a folder or /proc/version was a traceback)."""
    from .validate import check_dynamic, check_output, check_rank, check_weights

    if args.tool == "inspect":
        return
    check_rank(f"lora {args.tool} --rank", args.rank)
    if args.tool == "resize":
        check_dynamic(*_dynamic(args))
    if args.tool == "merge":
        check_weights(_weights(args.weights, len(args.loras)))
    check_output(args.out)


def _dynamic(args) -> tuple[str | None, float | None]:
    if not args.dynamic:
        return None, None
    method, value = args.dynamic
    try:
        return method, float(value)
    except ValueError:
        raise ValueError(f"lora resize --dynamic {method} {value}: the value must be a number") from None


def _weights(text: str | None, count: int) -> list[float]:
    if not text:
        return [1.0] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights {text!r}: expected comma-separated numbers, one per LoRA") from None
    if len(weights) != count:
        raise ValueError(f"--weights has {len(weights)} value(s) for {count} LoRA file(s)")
    return weights


def _largest_rank(loras: list[Path]) -> int:
    from .network import read_network_file

    networks = [read_network_file(p, "merge") for p in loras]
    return max(network.rank(name) or 1 for network in networks for name in network.modules)


def _fail(message: str) -> int:
    print(f"kiln: error: {message}", file=sys.stderr, flush=True)
    return 2
