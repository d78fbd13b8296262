"""A long text (or id list) goes through the tokenizer's batch calls, which let go of the GIL
(the single ``encode`` held it for 5.4 s on a 3.9 MB prompt, and the gateway answered nobody
meanwhile): the ids and the text are the single calls' own, with and without special tokens."""

from __future__ import annotations

import pytest

from loraplex.text import Tokenizer
from loraplex.text.tokenizer import LONG
from loraplex.tooling.demo import write_demo_model


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer(write_demo_model(tmp_path_factory.mktemp("demo"), num_adapters=0).model_dir)


@pytest.mark.parametrize("special", [True, False])
def test_long_texts_encode_and_decode_as_the_single_calls_do(tok, special):
    words = "the quick brown fox jumps over the lazy dog, éà 汉字 🙂 <|im_end|> "
    long = words * (3 * LONG // len(words))  # past LONG in characters and in ids
    for text in (long, words * 3):  # the batch path, and the other
        ids = tok.encode(text, add_special_tokens=special)
        assert ids == tok._tok.encode(text, add_special_tokens=special).ids
        assert tok.decode(ids, special) == tok._tok.decode(ids, skip_special_tokens=special)
    assert len(ids) < LONG <= min(len(long), len(tok.encode(long)))
