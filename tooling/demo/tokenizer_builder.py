"""Deterministic byte-level BPE tokenizer for the offline demo model."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from loraplex.text.chat_template import CHATML_WITH_TOOLS

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids: <s>=0, </s>=1, <|im_start|>=2, <|im_end|>=3.
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, IM_START, IM_END)
BOS_TOKEN_ID = 0
EOS_TOKEN_ID = 1
IM_START_ID = 2
IM_END_ID = 3

# Starts with bos like Llama templates: HF's apply_chat_template encodes without
# special tokens, so the template itself must supply <s>.  ChatML, with tools in the Hermes
# format (what the gateway's default --tool-call-parser reads).
CHAT_TEMPLATE = "{{ bos_token }}" + CHATML_WITH_TOOLS

_PARAGRAPHS = """\
The quick brown fox jumps over the lazy dog. A small model can still say many things.
Serving many adapters at once means sharing one base model between a lot of tenants.
Each request names an adapter, and the scheduler groups requests into batches so that
the accelerator stays busy. Low rank adaptation adds two thin matrices to a projection:
the first maps the input down to the rank, the second maps it back up to the output.
When the cache is full, the least recently used adapter is evicted to host memory.
Prefill reads the whole prompt at once; decode produces one token per step.
Hello, world! How are you today? I am fine, thank you. What is your name?
My name is Ada. I like numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42 and 2024.
def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # prints 3
{"role": "user", "content": "Tell me a story about a robot who learned to paint."}
Once upon a time there was a robot who lived in a quiet town near the sea.
Every morning it walked to the harbor, watched the boats, and counted the gulls.
One day a painter gave it a brush, and the robot began to paint the morning light.
"""

# Word lists for the generated part; a fixed LCG (not `random`) keeps the corpus
# identical across Python versions.
_SUBJECTS = (
    "the server",
    "the model",
    "the adapter",
    "the user",
    "a student",
    "my friend",
    "the teacher",
    "a cat",
    "the scheduler",
    "our team",
    "the kernel",
    "this token",
    "the engineer",
    "a robot",
    "the city",
)
_VERBS = (
    "reads",
    "writes",
    "loads",
    "stores",
    "computes",
    "answers",
    "explains",
    "sends",
    "receives",
    "builds",
    "tests",
    "measures",
    "prints",
    "finds",
    "learns",
    "teaches",
    "paints",
    "watches",
    "counts",
    "opens",
    "closes",
    "moves",
)
_OBJECTS = (
    "a long letter",
    "the weights",
    "every request",
    "an old book",
    "the batch",
    "a new question",
    "the memory pages",
    "three small numbers",
    "the blue door",
    "a warm cup of tea",
    "the prompt",
    "the output tokens",
    "a simple answer",
    "the green garden",
    "the evening news",
    "a large file",
)
_ENDINGS = (
    "quickly.",
    "again and again.",
    "before lunch.",
    "without any errors.",
    "in the morning.",
    "with great care.",
    "for the first time.",
    "every single day.",
    "at night.",
    "together.",
)


def _lcg(seed: int):
    state = seed
    while True:
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        yield state >> 33


def demo_corpus(num_sentences: int = 600) -> list[str]:
    """Fixed English-ish corpus: the paragraphs plus LCG-generated sentences."""
    rng = _lcg(12345)
    lines = _PARAGRAPHS.splitlines()
    for _ in range(num_sentences):
        subj = _SUBJECTS[next(rng) % len(_SUBJECTS)]
        verb = _VERBS[next(rng) % len(_VERBS)]
        obj = _OBJECTS[next(rng) % len(_OBJECTS)]
        end = _ENDINGS[next(rng) % len(_ENDINGS)]
        num = next(rng) % 1000
        lines.append(f"{subj.capitalize()} {verb} {obj} {end} Step {num} is done.")
    return lines


def build_demo_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Train the byte-level BPE in memory (deterministic: fixed corpus, tie-broken merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(demo_corpus(), trainer=trainer)
    for want, token in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(token) == want, token
    # Llama-style: prepend <s>, never append </s>.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B:1",
        special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID)],
    )
    return tok


def _dump_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_demo_tokenizer(
    out_dir: Path, vocab_size: int = 1024, *, model_max_length: int = 2048
) -> int:
    """Write tokenizer.json + HF configs into `out_dir`; returns the real vocab size."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_demo_tokenizer(vocab_size)
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n")
    _dump_json(
        out_dir / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": BOS_TOKEN,
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": EOS_TOKEN,
            "model_max_length": model_max_length,
            "pad_token": None,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    _dump_json(
        out_dir / "special_tokens_map.json",
        {
            "additional_special_tokens": [IM_START, IM_END],
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
        },
    )
    return tok.get_vocab_size()
