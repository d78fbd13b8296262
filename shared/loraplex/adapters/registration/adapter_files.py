"""Which files of an adapter folder are read, which are ignored, and which refuse the upload.

A folder as PEFT's ``save_pretrained`` writes it uploads as it is, as multipart files or by path: the two PEFT files are read, the extras PEFT and tokenizers save
(README.md, tokenizer files, chat templates) are ignored, pickles (``.bin``, ``.pt``, ...) are
refused by name because loading one runs code, and any other file is refused by name rather than
silently dropped (it may be the weights the tenant meant to send).
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from loraplex.errors import AdapterError
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE

Role = Literal["config", "weights", "ignored"]

IGNORED = (
    "README.md",
    ".gitattributes",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "vocab.json",
    "merges.txt",
)
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def classify(filename: str) -> Role:
    """The role of ``filename`` (a base name) in an upload, or AdapterError naming it."""
    if filename == CONFIG_FILE:
        return "config"
    if filename == WEIGHTS_FILE:
        return "weights"
    if filename.lower().endswith(PICKLES):
        raise AdapterError(
            f"file {filename!r} is a pickle, which is never loaded (it can run code): "
            f"send the adapter as {WEIGHTS_FILE}"
        )
    if any(fnmatch.fnmatchcase(filename, pattern) for pattern in IGNORED):
        return "ignored"
    raise AdapterError(
        f"unexpected file {filename!r}: an adapter is {CONFIG_FILE} and {WEIGHTS_FILE} "
        f"(also accepted and ignored: {', '.join(IGNORED)})"
    )
