"""GGUF file -> safetensors model folder (pilotcommit/models/gguf.py).

Without the 98 MB SmolLM2 file: a tiny random tied-embedding ``LlamaForCausalLM`` is written as a
GGUF with the ``gguf`` package's ``GGUFWriter`` (F32 tensors, Q/K permuted as llama.cpp writes
them, a byte-level BPE tokenizer with ChatML special tokens and a chat template in the metadata),
so the GGUF load itself is checked against the model it came from. The real file has one test,
marked ``real_model`` (the real-model tier, run by `.ci/vllm-tests`), on the model cache's conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pilotcommit.models import gguf as gguf_module
from pilotcommit.models.fetch import SMOLLM2_135M_INSTRUCT_Q4_1, HashMismatchError, file_sha256
from pilotcommit.models.gguf import (
    MANIFEST,
    convert_gguf,
    is_converted,
    load_gguf_as_plain_model,
    read_manifest,
    verify_converted,
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "Ġ i"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HEADS, KV_HEADS, HEAD_DIM, LAYERS = 4, 2, 8, 2
CHAT = [{"role": "user", "content": "What is 3+4? Reply with only the number."}]


def _tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return SPECIAL + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]


def _reference_model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(_tokens()), hidden_size=HEADS * HEAD_DIM, intermediate_size=64,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        for name, parameter in model.named_parameters():
            if "norm" in name:  # not all ones, so a dropped norm weight would show
                torch.nn.init.normal_(parameter, 1.0, 0.1)
    return model.eval()


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert script stores q/k rows interleaved for its RoPE; transformers' GGUF
    loader undoes it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(path: Path, model: LlamaForCausalLM) -> Path:
    import gguf

    tokens = _tokens()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(64)
    writer.add_embedding_length(HEADS * HEAD_DIM)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))  # 3 control, 1 normal
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])  # no output.weight: tied
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for gguf_name, hf_name in [
            ("attn_norm", "input_layernorm"), ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ]:
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", sd[p + hf_name + ".weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], HEADS))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], KV_HEADS))
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, str, LlamaForCausalLM]:
    reference = _reference_model()
    path = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf", reference)
    return path, file_sha256(path), reference


def _chat_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def _gguf_loaded(path: Path):
    return (AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval(),
            AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))


def test_the_tiny_gguf_loads_as_the_model_it_was_written_from(tiny_gguf):
    """The fixture itself: transformers' GGUF load gives back the reference model and a working
    chat tokenizer (so the conversion tests below compare against a faithful GGUF load)."""
    path, _, reference = tiny_gguf
    model, tokenizer = _gguf_loaded(path)
    assert type(model) is LlamaForCausalLM and model.config.tie_word_embeddings
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    ids = _chat_ids(tokenizer)
    assert ids[0, 0] == 1 and 2 in ids[0].tolist()  # <|im_start|> and <|im_end|> stay whole
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=0, rtol=0)


def test_convert_writes_a_plain_folder_with_the_gguf_models_logits(tiny_gguf, tmp_path):
    path, sha, _ = tiny_gguf
    target = convert_gguf(path, sha, tmp_path / "tiny-hf")
    assert target == tmp_path / "tiny-hf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-hf"]  # no partial folder left
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST} <= names
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True

    model = AutoModelForCausalLM.from_pretrained(str(target)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    assert type(model) is LlamaForCausalLM and getattr(model, "hf_quantizer", None) is None
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied after reloading
    assert tokenizer.chat_template == CHAT_TEMPLATE
    gguf_model, gguf_tokenizer = _gguf_loaded(path)
    ids = _chat_ids(tokenizer)
    assert torch.equal(ids, _chat_ids(gguf_tokenizer))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)
    assert model.generation_config.eos_token_id == gguf_model.generation_config.eos_token_id == 2

    manifest = read_manifest(target)
    assert manifest["source"] == {"file": path.name, "sha256": sha}
    assert manifest["model_class"] == "LlamaForCausalLM" and manifest["tied_word_embeddings"] is True
    assert set(manifest["files"]) == names - {MANIFEST}
    verify_converted(target)
    assert is_converted(target, sha) and not is_converted(target, "0" * 64)
    umask = os.umask(0)
    os.umask(umask)  # a shared cache: modes as a plain mkdir/open give, not the temporary files' 0700/0600
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((target / "model.safetensors").stat().st_mode) == 0o666 & ~umask


def test_a_finished_folder_is_reused_without_reading_the_gguf(tiny_gguf, tmp_path, monkeypatch):
    path, sha, _ = tiny_gguf
    target = convert_gguf(path, sha, tmp_path / "out")
    before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}

    def no_load(*args, **kwargs):
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(gguf_module, "load_gguf_as_plain_model", no_load)
    monkeypatch.setattr(gguf_module, "check_sha256", no_load)
    assert convert_gguf(path, sha.upper(), target) == target
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before


def test_a_wrong_hash_is_refused_before_the_file_is_parsed(tiny_gguf, tmp_path, monkeypatch):
    path, sha, _ = tiny_gguf
    wrong = hashlib.sha256(b"something else").hexdigest()
    monkeypatch.setattr(gguf_module, "load_gguf_as_plain_model",
                        lambda *a: (_ for _ in ()).throw(AssertionError("parsed")))
    with pytest.raises(HashMismatchError) as caught:
        convert_gguf(path, wrong, tmp_path / "out")
    message = str(caught.value)
    assert str(path) in message and wrong in message and sha in message
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_writing_leaves_no_folder_that_looks_complete(tiny_gguf, tmp_path, monkeypatch):
    """A failure after the weights were written (here: in the tokenizer's save) removes the
    partial folder and never creates the target; a partial folder a killed process left behind
    (no manifest) is not taken for a finished conversion."""
    path, sha, _ = tiny_gguf
    real_load = gguf_module.load_gguf_as_plain_model

    def load_then_break_tokenizer(gguf_path):
        model, tokenizer = real_load(gguf_path)

        def crash(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(tokenizer, "save_pretrained", crash)
        return model, tokenizer

    monkeypatch.setattr(gguf_module, "load_gguf_as_plain_model", load_then_break_tokenizer)
    with pytest.raises(OSError, match="disk full"):
        convert_gguf(path, sha, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

    # what a SIGKILL during the save would leave at the final name if writes went there directly
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert not is_converted(half, sha) and read_manifest(half) is None
    with pytest.raises(FileExistsError, match="not a finished GGUF conversion"):
        convert_gguf(path, sha, half)


def test_a_folder_converted_from_another_file_is_not_overwritten(tiny_gguf, tmp_path):
    path, sha, _ = tiny_gguf
    target = convert_gguf(path, sha, tmp_path / "out")
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["source"]["sha256"] = "f" * 64
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match="another file"):
        convert_gguf(path, sha, target)


def test_the_plain_model_keeps_the_callers_random_stream(tiny_gguf):
    path, _, _ = tiny_gguf
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model, _ = load_gguf_as_plain_model(path)
    assert torch.equal(torch.rand(3), expected)
    assert getattr(model.config, "quantization_config", None) is None


@pytest.mark.real_model
def test_smollm2s_converted_folder_has_the_gguf_models_logits(smollm2_folder):
    """SmolLM2-135M-Instruct Q4_1: 30 layers, tied head, dequantized to float32 (~520 MB).

    The folder the pipeline loads: the model cache's conversion (``smollm2_folder``: converted by
    ``convert_gguf`` on first use, kept between runs), checked against the GGUF model itself. A
    second conversion into a temporary folder here would cost about 20 s of every CI run and test
    nothing the tiny-GGUF tests above do not (the same ``convert_gguf``, with its Q/K permutation,
    tied head, tokenizer and chat template, on every run)."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from pilotcommit.models.fetch import model_cache_dir

    real_gguf = model_cache_dir() / SMOLLM2_135M_INSTRUCT_Q4_1.filename  # fetched by the fixture
    target = smollm2_folder
    assert is_converted(target, SMOLLM2_135M_INSTRUCT_Q4_1.file_sha256)  # of this very file
    verify_converted(target)  # every file as the conversion wrote it
    model = AutoModelForCausalLM.from_pretrained(str(target)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    assert type(model) is LlamaForCausalLM and model.config.num_hidden_layers == 30
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    gguf_model, gguf_tokenizer = _gguf_loaded(real_gguf)
    ids = _chat_ids(tokenizer)
    assert torch.equal(ids, _chat_ids(gguf_tokenizer))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)
