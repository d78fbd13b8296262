"""Stop conditions through the LLM API, and IncrementalDetokenizer on its own."""

from __future__ import annotations

import json
import random

import pytest

from loraplex import LLM, SamplingParams
from loraplex.text import IncrementalDetokenizer, Tokenizer
from loraplex.tooling.demo import EOS_TOKEN_ID, write_demo_model

PROMPT = "The quick brown fox jumps over"
N = 24
OPTS = {"dtype": "float32", "device": "cpu", "block_size": 4, "max_model_len": 128}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("demo"), num_adapters=0).model_dir


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model_dir, **OPTS)


@pytest.fixture(scope="module")
def tok(model_dir) -> Tokenizer:
    return Tokenizer(model_dir)


@pytest.fixture(scope="module")
def greedy(llm):
    """The reference greedy continuation (EOS ignored so it always runs N tokens)."""
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True))[0]
    assert len(out.token_ids) == N
    assert out.finish_reason == "length"
    return out


def _first_new_token_index(ids: list[int], start: int) -> int:
    """First index >= start whose token did not occur before it (so it stops exactly there)."""
    for i in range(start, len(ids)):
        if ids[i] not in ids[:i] and ids[i] != EOS_TOKEN_ID:
            return i
    pytest.fail(f"no fresh token after index {start} in {ids}")


# ---- stop conditions through LLM.generate ------------------------------------------------------


def test_stop_token_id_ends_generation(llm, greedy):
    ids = greedy.token_ids
    i = _first_new_token_index(ids, 3)
    stop_id = ids[i]
    out = llm.generate(
        PROMPT, SamplingParams(temperature=0.0, max_tokens=N, stop_token_ids=[stop_id])
    )[0]
    assert out.token_ids == ids[: i + 1]
    assert out.token_ids[-1] == stop_id
    assert out.finish_reason == "stop"
    assert out.stop_reason == stop_id


def test_stop_token_id_stops_even_with_ignore_eos(llm, greedy):
    ids = greedy.token_ids
    i = _first_new_token_index(ids, 3)
    params = SamplingParams(temperature=0.0, max_tokens=N, stop_token_ids=[ids[i]], ignore_eos=True)
    out = llm.generate(PROMPT, params)[0]
    assert out.token_ids == ids[: i + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", ids[i])


def test_stop_token_that_never_appears_changes_nothing(llm, greedy):
    unused = next(t for t in range(4, 1000) if t not in greedy.token_ids)
    out = llm.generate(
        PROMPT,
        SamplingParams(temperature=0.0, max_tokens=N, stop_token_ids=[unused], ignore_eos=True),
    )[0]
    assert out.token_ids == greedy.token_ids
    assert out.finish_reason == "length" and out.stop_reason is None


def _pick_stop_string(text: str) -> str:
    """A 3-char substring from the middle of ``text`` that first occurs there."""
    for start in range(len(text) // 3, len(text) - 3):
        s = text[start : start + 3]
        if "\ufffd" not in s and s.strip() == s and s and text.find(s) == start:
            return s
    pytest.fail(f"no usable stop string in {text!r}")


def test_stop_string_cuts_text_before_it(llm, greedy, tok):
    # only meaningful when the greedy text decodes cleanly up to the chosen point
    text = greedy.text
    stop = _pick_stop_string(text)
    cut = text.find(stop)
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=N, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.stop_reason == stop
    assert out.text == text[:cut]
    assert stop not in out.text
    # generation ended on the token that completed the stop string
    k = next(k for k in range(1, N + 1) if stop in tok.decode(greedy.token_ids[:k]))
    assert out.token_ids == greedy.token_ids[:k]


def test_first_matching_stop_string_wins(llm, greedy):
    text = greedy.text
    early = _pick_stop_string(text[: len(text) // 2 + 3])
    late = _pick_stop_string(text)
    if text.find(early) >= text.find(late):
        pytest.fail(f"test setup: {early!r} should occur before {late!r} in {text!r}")
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=N, stop=[late, early]))[0]
    assert out.stop_reason == early
    assert out.text == text[: text.find(early)]


def test_max_tokens_gives_length(llm, greedy):
    assert EOS_TOKEN_ID not in greedy.token_ids[:5]
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=5))[0]
    assert out.token_ids == greedy.token_ids[:5]
    assert out.finish_reason == "length"
    assert out.stop_reason is None


def test_length_when_context_is_full(model_dir, greedy):
    small = LLM(model_dir, **{**OPTS, "max_model_len": 16})
    prompt_ids = small.tokenizer.encode(PROMPT)
    out = small.generate(
        [prompt_ids], SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
    )[0]
    assert len(prompt_ids) + len(out.token_ids) == 16
    assert out.finish_reason == "length"
    assert out.token_ids == greedy.token_ids[: len(out.token_ids)]


@pytest.fixture(scope="module")
def eos_model(model_dir, greedy, tmp_path_factory):
    """The demo model with generation_config naming a token of the greedy run as a second EOS."""
    ids = greedy.token_ids
    i = _first_new_token_index(ids, 3)
    d = tmp_path_factory.mktemp("eos-model")
    for f in model_dir.iterdir():
        if f.is_file():
            (d / f.name).symlink_to(f)
    (d / "generation_config.json").unlink()
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS_TOKEN_ID, ids[i]]}))
    return LLM(d, **OPTS), i


def test_eos_from_generation_config_stops(eos_model, greedy):
    llm, i = eos_model
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=N))[0]
    assert out.token_ids == greedy.token_ids[: i + 1]
    assert out.finish_reason == "stop"
    assert out.stop_reason is None  # EOS is not a stop token id or string


def test_ignore_eos_runs_to_max_tokens(eos_model, greedy):
    llm, i = eos_model
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True))[0]
    assert out.token_ids == greedy.token_ids
    assert greedy.token_ids[i] in out.token_ids[: i + 1]
    assert out.finish_reason == "length"


def test_output_text_matches_token_ids(llm, greedy, tok):
    # the streamed text of a finished request is the decoding of its tokens
    assert greedy.text == tok.decode(greedy.token_ids)


def test_streamed_deltas_concatenate_to_final_text(llm, greedy):
    eng = llm.engine
    eng.add_request(
        "stream",
        llm.tokenizer.encode(PROMPT),
        SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True),
    )
    pieces, ids = [], []
    while eng.has_unfinished():
        for out in eng.step():
            pieces.append(out.new_text)
            ids.extend(out.new_token_ids)
    assert ids == greedy.token_ids
    assert "".join(pieces) == greedy.text


# ---- IncrementalDetokenizer alone --------------------------------------------------------------


def _stream(tok: Tokenizer, ids: list[int], **kw) -> tuple[list[str], IncrementalDetokenizer]:
    det = IncrementalDetokenizer(tok, **kw)
    deltas = [det.append(i) for i in ids]
    deltas.append(det.flush())
    return deltas, det


UNICODE_TEXTS = [
    "héllo wörld — ünïcödé çà et là",
    "日本語のテキスト、漢字とかな。",
    "emoji 🙂🚀 and a family 👩‍👩‍👧 plus flags 🇫🇷🇯🇵",
    "Ω≈ç√∫˜µ≤≥÷ ¡™£¢∞§¶•ªº",
    "mixed: Step 42 is done. Привет, мир! مرحبا 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_multibyte_text_round_trips_without_replacement_chars(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    deltas, det = _stream(tok, ids)
    assert "".join(deltas) == text
    assert det.text == text
    assert not any("\ufffd" in d for d in deltas)  # incomplete UTF-8 is held back, never shown


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_multibyte_text_after_a_prompt_context(tok, text):
    context = tok.encode("Hello, world! ", add_special_tokens=True)
    ids = tok.encode(text, add_special_tokens=False)
    deltas, _ = _stream(tok, ids, context_ids=context)
    assert "".join(deltas) == text


def test_random_ids_concatenate_to_full_decode(tok):
    rng = random.Random(1234)
    vocab = tok.vocab_size
    mismatches = []
    for _ in range(300):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        deltas, _ = _stream(tok, ids)
        joined, full = "".join(deltas), tok.decode(ids)
        if joined != full:
            mismatches.append((ids, joined[-8:], full[-8:]))
    assert not mismatches, (
        f"{len(mismatches)} of 300 streams differ from tokenizer.decode, e.g. "
        f"ids={mismatches[0][0]} stream tail={mismatches[0][1]!r} decode tail={mismatches[0][2]!r}"
    )


def test_incomplete_utf8_at_end_of_stream_is_flushed(tok):
    # "€" is three bytes; stop the stream after the first token(s) covering only part of it
    ids = tok.encode("price: 5€", add_special_tokens=False)
    for cut in range(1, len(ids) + 1):
        prefix = ids[:cut]
        deltas, _ = _stream(tok, prefix)
        assert "".join(deltas) == tok.decode(prefix), (prefix, deltas)


def test_special_tokens_are_skipped(tok):
    ids = tok.encode("Hello", add_special_tokens=False)
    stream = [EOS_TOKEN_ID, *ids, 2, 3, *ids]
    deltas, _ = _stream(tok, stream)
    assert "".join(deltas) == tok.decode(stream) == "HelloHello"


def _boundary_stop(tok: Tokenizer, text: str) -> tuple[list[int], str]:
    """Token ids of ``text`` and a stop string made of the end of one token and the start of
    the next, so the stop string can only be seen once both tokens are in."""
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert "".join(pieces) == text
    for j in range(len(ids) // 2, len(ids) - 1):
        a, b = pieces[j], pieces[j + 1]
        if len(a) >= 2 and len(b) >= 2:
            stop = a[-2:] + b[:2]
            if text.find(stop) == len("".join(pieces[:j])) + len(a) - 2:
                return ids, stop
    pytest.fail("no token boundary with two-char tokens on both sides")


TEXT = "Once upon a time there was a robot who lived in a quiet town near the sea."


def test_stop_string_spanning_two_tokens_is_caught_and_never_emitted(tok):
    ids, stop = _boundary_stop(tok, TEXT)
    det = IncrementalDetokenizer(tok, stop=(stop,))
    deltas = []
    for i in ids:
        deltas.append(det.append(i))
        if det.stopped:
            break
    deltas.append(det.flush())
    joined = "".join(deltas)
    assert det.stopped == stop
    assert joined == TEXT[: TEXT.find(stop)]
    # deltas only ever extend the text, so equality above also means no part of the stop
    # string was shown before the second token completed it
    # after the stop nothing more is emitted
    assert det.append(ids[-1]) == ""
    assert det.flush() == ""


def test_stop_string_inside_one_token(tok):
    text = "Hello, world! How are you today?"
    ids = tok.encode(text, add_special_tokens=False)
    deltas, det = _stream(tok, ids, stop=("world",))
    assert det.stopped == "world"
    assert "".join(deltas) == "Hello, "


def test_partial_stop_prefix_is_released_when_it_does_not_complete(tok):
    text = "the green garden and the blue door"
    ids = tok.encode(text, add_special_tokens=False)
    # "the b" begins like "the g" (only the last char differs): the held "the " must come out
    deltas, det = _stream(tok, ids, stop=("the gX",))
    assert det.stopped is None
    assert "".join(deltas) == text


def test_held_text_is_flushed_at_end_of_stream(tok):
    text = "Hello, wor"
    ids = tok.encode(text, add_special_tokens=False)
    det = IncrementalDetokenizer(tok, stop=("world",))
    streamed = "".join(det.append(i) for i in ids)
    assert not streamed.endswith("wor")  # "wor" may still become "world": held back
    assert streamed + det.flush() == text
    assert det.stopped is None


def test_stop_string_across_many_single_char_tokens(tok):
    text = "abcdefghij"
    ids = [tok.encode(c, add_special_tokens=False)[0] for c in text]
    assert tok.decode(ids) == text
    deltas, det = _stream(tok, ids, stop=("def",))
    assert det.stopped == "def"
    assert "".join(deltas) == "abc"
    assert all("d" not in d for d in deltas)


def test_stop_string_with_multibyte_chars(tok):
    text = "héllo wörld — ünïcödé"
    ids = tok.encode(text, add_special_tokens=False)
    deltas, det = _stream(tok, ids, stop=("wö",))
    assert det.stopped == "wö"
    assert "".join(deltas) == "héllo "


def test_several_stop_strings_earliest_in_text_wins(tok):
    text = "Hello, world! How are you today?"
    ids = tok.encode(text, add_special_tokens=False)
    deltas, det = _stream(tok, ids, stop=("today", "How", "xyz"))
    assert det.stopped == "How"
    assert "".join(deltas) == "Hello, world! "


def test_stop_string_at_the_very_start(tok):
    text = "Hello there"
    ids = tok.encode(text, add_special_tokens=False)
    deltas, det = _stream(tok, ids, stop=("Hel",))
    assert det.stopped == "Hel"
    assert "".join(deltas) == ""


def test_include_stop_str_in_output_keeps_the_stop_string(llm, greedy, tok):
    """vLLM's ``include_stop_str_in_output``: the text runs to the end of the stop string."""
    text = greedy.text
    stop = _pick_stop_string(text)
    params = SamplingParams(
        temperature=0.0, max_tokens=N, stop=[stop], include_stop_str_in_output=True
    )
    out = llm.generate(PROMPT, params)[0]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.text == text[: text.find(stop) + len(stop)]
    # one stream: spanning two tokens, and inside one token
    ids, spanning = _boundary_stop(tok, TEXT)
    deltas, det = _stream(tok, ids, stop=(spanning,), include_stop=True)
    assert "".join(deltas) == TEXT[: TEXT.find(spanning) + len(spanning)]
    hello = tok.encode("Hello, world! How are you today?", add_special_tokens=False)
    deltas, det = _stream(tok, hello, stop=("world",), include_stop=True)
    assert "".join(deltas) == "Hello, world"
