"""The evaluation table, written into the job folder: metrics.csv (for tools), metrics.md (for people and the
UI) and one line chart per metric over steps (PNG, drawn with Pillow to keep plotting libraries out)."""
from __future__ import annotations

import csv
import io

from PIL import Image, ImageDraw

from ..atomic import write_atomically, write_text_atomic
from .metrics import LOWER_IS_BETTER

NAMES = {"fid": "FID", "kid": "KID", "is": "Inception Score", "clip": "CLIP score", "val_loss": "Validation loss"}


def metric_names(result) -> list[str]:
    return [name for name in NAMES if any(name in scores for _, scores in result.rows)]


def write_report(result) -> None:
    names = metric_names(result)
    result.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(result.out_dir / "metrics.csv", _csv(result, names))
    write_text_atomic(result.out_dir / "metrics.md", markdown(result, names))
    for name in names:
        points = [(checkpoint.step, scores[name].value) for checkpoint, scores in result.rows if name in scores]
        chart = line_chart(f"{_label(result, name)} over steps ({_direction(name)})", points)
        write_atomically(result.out_dir / f"{name}.png", lambda tmp, c=chart: c.save(tmp, format="PNG"))


def _label(result, name: str) -> str:
    if name in ("fid", "kid") and result.feature_name and result.feature_name != "Inception-v3":
        return f"{NAMES[name]} ({result.feature_name})"
    return NAMES[name]


def _direction(name: str) -> str:
    return "lower is better" if LOWER_IS_BETTER[name] else "higher is better"


def _csv(result, names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["checkpoint", "step", "file", *names, "fid_low", "fid_high"])
    for checkpoint, scores in result.rows:
        fid = scores.get("fid")
        writer.writerow([checkpoint.label, checkpoint.step, checkpoint.path or "",
                         *[f"{scores[n].value:.6g}" if n in scores else "" for n in names],
                         f"{fid.low:.6g}" if fid else "", f"{fid.high:.6g}" if fid else ""])
    return buffer.getvalue()


def markdown(result, names: list[str]) -> str:
    lines = [f"Evaluated on {result.n} generated images per checkpoint (fixed prompts and seeds)."]
    if "fid" in names:
        lines.append(f"FID on {result.n} images is noisy: the brackets are a {200}-round bootstrap 5-95% interval.")
    lines += ["", "| checkpoint | step | " + " | ".join(_label(result, n) for n in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for checkpoint, scores in result.rows:
        mark = " **(best)**" if result.best == checkpoint else ""
        cells = [scores[n].text() if n in scores else "-" for n in names]
        lines.append(f"| {checkpoint.label}{mark} | {checkpoint.step} | " + " | ".join(cells) + " |")
    if result.best is not None:
        lines.append(f"\nBest by {NAMES.get(result.best_by, result.best_by)}: **{result.best.label}** "
                     f"({result.best.path.name if result.best.path else 'base'}).")
    for name, reason in result.missing.items():
        lines.append(f"\n{NAMES.get(name, name)} not computed: {reason}")
    return "\n".join(lines) + "\n"


def line_chart(title: str, points: list[tuple[float, float]], size: tuple[int, int] = (640, 360)) -> Image.Image:
    """A plain line chart with numeric axes: x = step, y = value, each point marked and labelled."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill="black")
    if not points:
        return image
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad = (y1 - y0) * 0.1
    y0, y1 = y0 - pad, y1 + pad

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for i in range(5):  # y ticks
        value = y0 + (y1 - y0) * i / 4
        _, y = at(x0, value)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{value:.4g}", fill="black")
    for x in sorted(set(xs)):
        px, _ = at(x, y0)
        draw.line([(px, height - bottom), (px, height - bottom + 4)], fill="black")
        draw.text((px - 10, height - bottom + 8), str(int(x)), fill="black")
    draw.line([at(x, y) for x, y in points], fill=(200, 60, 30), width=2)
    for x, y in points:
        px, py = at(x, y)
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(200, 60, 30))
    return image
