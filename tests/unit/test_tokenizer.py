"""The character tokenizer of the embedded task: round trips, special ids, unknowns.

Built locally and saved to a temporary directory; nothing is downloaded.
"""

from __future__ import annotations

import itertools
import random

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pilotcommit.models.tokenizer import ALPHABET, BOS, EOS, PAD, UNK, build_char_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_char_tokenizer()


def _alphabet_strings() -> list[str]:
    """Every string of length <= 2 over the alphabet, plus seeded longer ones."""
    short = ["".join(chars) for n in (1, 2) for chars in itertools.product(ALPHABET, repeat=n)]
    rng = random.Random(0)
    longer = ["".join(rng.choices(ALPHABET, k=rng.randint(3, 30))) for _ in range(300)]
    return short + longer + [ALPHABET, "  12 + 3 =  ", "(45+67)*8-123="]


def test_special_token_ids(tokenizer):
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.unk_token_id == 3
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == [PAD, BOS, EOS, UNK]
    assert len(tokenizer) == 4 + len(ALPHABET)
    assert tokenizer.padding_side == "left"


def test_one_id_per_character_after_the_specials(tokenizer):
    for offset, char in enumerate(ALPHABET):
        assert tokenizer(char, add_special_tokens=False)["input_ids"] == [4 + offset]


def test_encode_decode_round_trip_of_alphabet_strings(tokenizer):
    texts = _alphabet_strings()
    encoded = tokenizer(texts)["input_ids"]
    for text, ids in zip(texts, encoded):
        # <bos> in front, one id per character, spaces kept
        assert ids[0] == tokenizer.bos_token_id
        assert len(ids) == len(text) + 1
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.batch_decode(encoded, skip_special_tokens=True) == texts


def test_decode_skips_eos_and_pad(tokenizer):
    ids = (
        [tokenizer.pad_token_id, tokenizer.bos_token_id]
        + tokenizer("-42", add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
    )
    assert tokenizer.decode(ids, skip_special_tokens=True) == "-42"


def test_unknown_characters_map_to_unk(tokenizer):
    ids = tokenizer("1a/2é", add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids == [ALPHABET.index("1") + 4, unk, unk, ALPHABET.index("2") + 4, unk]


def test_save_and_reload_gives_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    texts = _alphabet_strings() + ["1a/2é"]
    expected = tokenizer(texts)["input_ids"]
    for loader in (AutoTokenizer.from_pretrained, PreTrainedTokenizerFast.from_pretrained):
        reloaded = loader(tmp_path)
        assert reloaded(texts)["input_ids"] == expected
        assert (
            reloaded.pad_token_id,
            reloaded.bos_token_id,
            reloaded.eos_token_id,
            reloaded.unk_token_id,
        ) == (0, 1, 2, 3)
        assert reloaded.padding_side == "left"
        assert reloaded.batch_decode(expected, skip_special_tokens=True)[:-1] == texts[:-1]


def test_left_padding_batches(tokenizer):
    batch = tokenizer(["1+2=", "10*3-4="], padding=True)
    assert batch["input_ids"][0][:3] == [tokenizer.pad_token_id] * 3
    assert batch["attention_mask"][0] == [0, 0, 0, 1, 1, 1, 1, 1]


def test_repeated_alphabet_is_rejected():
    with pytest.raises(ValueError, match="repeated"):
        build_char_tokenizer("0123401")
