"""Kohya-style sample prompt lines, `a photo of sks dog --n blurry, lowres --w 512 --h 768 --s 28 --l 6.5 --d 1`,
read without torch: the config checks every line when the job loads (so `check` refuses what would fail at
the first preview), and sampling.py renders what this returns."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

OPTIONS = {"--n": "negative", "--w": "width", "--h": "height", "--s": "steps", "--l": "cfg_scale", "--d": "seed"}


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    seed: int


def _limits() -> dict[str, tuple[float, float]]:
    """Each numeric option's allowed range: the [sample] field it overrides (sizes: dataset.resolution's)."""
    from .schema import FIELDS_BY_NAME  # the schema imports this module for its check

    def bounds(name: str) -> tuple[float, float]:
        field = FIELDS_BY_NAME[name]
        return field.min, field.max

    return {"width": (64, bounds("dataset.resolution")[1]), "height": (64, bounds("dataset.resolution")[1]),
            "steps": bounds("sample.steps"), "cfg_scale": bounds("sample.cfg_scale"), "seed": bounds("sample.seed")}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_prompt_line(line: str, defaults: SamplePrompt) -> SamplePrompt:
    """Text up to the first ` --x` option is the prompt; options override the [sample] defaults. Raises
    ValueError naming the line and the option for an unknown option or a value out of range."""
    words = line.split(" --")
    values: dict = {"prompt": words[0].strip()}
    limits = _limits()
    for word in words[1:]:
        flag, _, value = word.partition(" ")
        key = OPTIONS.get("--" + flag.strip())
        if key is None:
            raise ValueError(f"sample prompt {line!r}: unknown option --{flag.strip()} "
                             f"(known: {', '.join(OPTIONS)})")
        value = value.strip()
        if key == "negative":
            values[key] = value
            continue
        try:
            number = float(value) if key == "cfg_scale" else int(value)
        except ValueError:
            raise ValueError(f"sample prompt {line!r}: --{flag.strip()} needs a number"
                             f"{'' if key == 'cfg_scale' else ' (whole)'}, got {value!r}") from None
        low, high = limits[key]
        if not (math.isfinite(number) and low <= number <= high):
            raise ValueError(f"sample prompt {line!r}: --{flag.strip()} {value} is out of range (must be between "
                             f"{_number(low)} and {_number(high)})")
        values[key] = number
    sample = replace(defaults, **values)
    # Pixel sizes must divide into latents (and the UNet's downsampling): round down to a multiple of 8.
    return replace(sample, width=max(64, sample.width // 8 * 8), height=max(64, sample.height // 8 * 8))


def prompt_lines_problem(lines: list[str]) -> str | None:
    """The sample.prompts check: the first line that would fail at preview time, said as that failure."""
    defaults = SamplePrompt("", "", 512, 512, 20, 7.0, 0)
    for line in lines:
        if line.strip():
            try:
                parse_prompt_line(line, defaults)
            except ValueError as e:
                return str(e)
    return None
