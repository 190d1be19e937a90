"""Keep the console for Kiln's own messages: the libraries' import-time chatter (bitsandbytes' missing CPU
kernels, transformers' torchvision fallback notes, diffusers' dtype hints) says nothing a user can act on."""
from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("bitsandbytes", "transformers", "diffusers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Could not find a config file.*")  # peft, on local folders
