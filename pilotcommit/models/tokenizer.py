"""A character-level tokenizer for the embedded arithmetic task, built locally.

One token per character of the task alphabet (digits, ``+ - * = ( )`` and a
space), plus ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>``. Built with the
``tokenizers`` library and wrapped as ``transformers.PreTrainedTokenizerFast``
so that ``save_pretrained`` / ``from_pretrained`` and the rollout engines treat
it like any hub tokenizer. Encoding adds ``<bos>`` in front (the model always
sees a start token); ``<eos>`` ends an answer and is added by whoever builds
training targets, not by the tokenizer.

It deliberately downloads nothing and knows nothing about prompts or chat
templates: the embedded task's prompt is the problem string itself.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
ALPHABET = "0123456789+-*=() "


def build_char_tokenizer(alphabet: str = ALPHABET) -> PreTrainedTokenizerFast:
    """Return a tokenizer with ids 0..3 for pad/bos/eos/unk and one id per character after."""
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet {alphabet!r} has repeated characters")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in alphabet:
        vocab[char] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # every character is its own "word"; the space too, so it is not swallowed
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()  # join tokens without separators
    bos_id = vocab[BOS]
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",  # generation appends on the right
        model_max_length=256,
    )
    return tokenizer
