"""``continue_final_message`` (transformers' and vLLM's): the rendered chat ends inside the last
message, exactly as transformers' ``apply_chat_template`` cuts it, and the offline ``LLM.chat``
continues it."""

from __future__ import annotations

import pytest
import transformers

from loraplex import LLM, SamplingParams
from loraplex.errors import InvalidRequestError
from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import write_demo_model

CHATS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure, the answer is"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "  Blue, or  "},  # trimmed by some templates
    ],
    [{"role": "user", "content": "Write JSON"}, {"role": "assistant", "content": '{"a":'}],
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return write_demo_model(tmp_path_factory.mktemp("cont"), num_adapters=0, seed=3)


@pytest.mark.parametrize("chat", CHATS)
def test_the_cut_is_transformers(demo, chat) -> None:  # type: ignore[no-untyped-def]
    ours = Tokenizer(str(demo.model_dir))
    theirs = transformers.AutoTokenizer.from_pretrained(demo.model_dir)
    want = theirs.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=False, continue_final_message=True
    )
    got = ours.apply_chat_template(chat, False, continue_final_message=True)
    assert got == want
    assert ours.encode_chat(chat, False, continue_final_message=True) == ours.encode(
        want, add_special_tokens=False
    )


def test_nothing_to_continue_is_refused(demo) -> None:  # type: ignore[no-untyped-def]
    tok = Tokenizer(str(demo.model_dir))
    for last in ("", "   "):
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": last}]
        with pytest.raises(InvalidRequestError, match="continue_final_message"):
            tok.apply_chat_template(chat, False, continue_final_message=True)


def test_llm_chat_continues_the_message(demo) -> None:  # type: ignore[no-untyped-def]
    llm = LLM(str(demo.model_dir), dtype="float32", device="cpu")
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    out = llm.chat(CHATS[0], params, add_generation_prompt=False, continue_final_message=True)[0]
    ids = llm.tokenizer.encode_chat(CHATS[0], False, continue_final_message=True)
    assert out.token_ids == llm.generate(ids, params)[0].token_ids
    with pytest.raises(InvalidRequestError):
        llm.chat(CHATS[0], params, continue_final_message=True)  # with a generation prompt
