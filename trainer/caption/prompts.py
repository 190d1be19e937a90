"""What the vision-language captioners are asked: Florence-2's task token for a length, and the instruction the
LLM-based ones (JoyCaption, Qwen-VL) get for a length, a style and a focus template. Pure strings, no torch.

The sentences follow the phrasings JoyCaption was trained on ("Write a descriptive caption for this image in a
formal tone.", "Write a list of Booru-like tags for this image."); Qwen-VL follows any plain instruction."""
from __future__ import annotations

LENGTHS = ("short", "medium", "long")
STYLES = ("natural", "tags", "both")

# Florence-2 has no free prompt: its task token chooses how much it says.
FLORENCE_TASKS = {"short": "<CAPTION>", "medium": "<DETAILED_CAPTION>", "long": "<MORE_DETAILED_CAPTION>"}

_NATURAL = {
    "short": "Write a short descriptive caption for this image in one sentence.",
    "medium": "Write a descriptive caption for this image in a formal tone, in a few sentences.",
    "long": "Write a long descriptive caption for this image in a formal tone.",
}
_TAG_COUNTS = {"short": 10, "medium": 25, "long": 50}
_TAGS = "Write a list of Booru-like tags for this image, at most {count} tags, separated by commas."
_BOTH_TAGS = "Then, on a new line, write at most {count} Booru-like tags for it, separated by commas."

# Shipped focus templates: what to describe (added after the length/style sentence). "describe" adds nothing.
TEMPLATES = {
    "describe": "",
    "outfit-not-face": "Describe the character's outfit, clothing and accessories in detail, but do not describe "
                       "their face or facial features.",
    "style-not-subject": "Describe the art style, medium, technique, colour palette and lighting, not the subject "
                         "or what happens in the picture.",
    "subject-not-style": "Describe the subject, pose and setting; do not mention the art style or medium.",
    "no-text": "Do not mention any text, watermark or signature in the image.",
}

# Generation limits (new tokens) when max_tokens is 0: enough for the length asked, no runaway paragraphs.
DEFAULT_MAX_TOKENS = {"short": 48, "medium": 160, "long": 320}


def florence_task(length: str) -> str:
    return FLORENCE_TASKS[length]


def instruction(style: str, length: str, template: str, prompt: str = "") -> str:
    """The user message for an LLM-based captioner. A custom `prompt` is used exactly as written (the artist's
    own words win); otherwise the length/style sentence, then the template's focus sentence."""
    if prompt.strip():
        return prompt.strip()
    if style == "tags":
        head = _TAGS.format(count=_TAG_COUNTS[length])
    elif style == "both":
        head = _NATURAL[length] + " " + _BOTH_TAGS.format(count=_TAG_COUNTS[length])
    else:
        head = _NATURAL[length]
    focus = TEMPLATES[template]
    return f"{head} {focus}".strip()


def max_new_tokens(max_tokens: int, length: str) -> int:
    return max_tokens if max_tokens > 0 else DEFAULT_MAX_TOKENS[length]
