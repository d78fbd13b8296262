"""Tokenization, chat templates and incremental detokenization (no torch: the gateway uses it)."""

from loraplex.text.detokenizer import IncrementalDetokenizer
from loraplex.text.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer", "Tokenizer"]
