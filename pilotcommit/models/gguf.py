"""A GGUF model file turned into an ordinary safetensors model folder.

transformers loads a GGUF file (``from_pretrained(folder, gguf_file=name)``, model and tokenizer,
with the ``gguf`` and ``accelerate`` packages), but the model it returns refuses
``save_pretrained`` ("The model is quantized with gguf and is not serializable") and its config
carries a misleading ``quantization_config``: for an architecture outside transformers' new GGUF
path (Llama among them) every tensor is already dequantized to float32. So
:func:`convert_gguf`:

1. checks the file's sha256 before anything reads it (:class:`~pilotcommit.models.fetch.
   HashMismatchError` names the file, the expected and the actual hash);
2. loads model and tokenizer from the GGUF; rebuilds the model class from its config without
   the ``quantization_config`` and loads the dequantized weights with ``strict=True`` (every key
   matched, none left over); a model whose GGUF has no ``output.weight`` has its output head tied
   to the embedding, and stays tied (checked);
3. writes ``save_pretrained`` (safetensors, config, generation config) and
   ``tokenizer.save_pretrained`` (the chat template embedded in the GGUF kept) into a temporary
   ``.<name>.partial-*`` folder next to the target, then :data:`MANIFEST` last (the source file
   and sha256, each written file's size and sha256, the library versions), syncs it to disk and
   renames it into place. A crash leaves at most a ``.partial-*`` folder, never a target folder
   that looks complete; a target with a manifest for the same sha256 is a finished conversion
   and is returned as is (:func:`read_manifest`), without reading the GGUF again.

The converted folder loads with ``from_pretrained(folder)`` alone (no gguf, no accelerate) in
transformers and vLLM, in float32 (dequantized Q4_1 values: the same numbers as the GGUF load).
Pure library code: no Prefect, no MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from pilotcommit.models.fetch import check_sha256, file_sha256, fsync_dir, ordinary_mode

MANIFEST = "pilotcommit-gguf-conversion.json"
MANIFEST_FORMAT = 1


def read_manifest(folder: str | Path) -> dict | None:
    """The conversion manifest of a finished folder, or None (no folder, no manifest, not
    readable: not a finished conversion)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def is_converted(folder: str | Path, source_sha256: str) -> bool:
    """Whether ``folder`` is a finished conversion of the GGUF file with this sha256 whose files
    are all there with their recorded sizes (hashes are not re-read: :func:`verify_converted`)."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("source", {}).get("sha256") != source_sha256.lower():
        return False
    return all((Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size == entry["bytes"]
               for name, entry in manifest["files"].items())


def verify_converted(folder: str | Path) -> None:
    """Re-hash every file the manifest lists; :class:`HashMismatchError` on the first difference."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder} is not a finished GGUF conversion (no {MANIFEST})")
    for name, entry in manifest["files"].items():
        check_sha256(Path(folder) / name, entry["sha256"], what="converted file")


def convert_gguf(gguf_path: str | Path, expected_sha256: str, target: str | Path) -> Path:
    """Convert the GGUF file at ``gguf_path`` (sha256 ``expected_sha256``) into a safetensors model
    folder at ``target`` (module docstring) and return ``target``.

    ``target`` already a finished conversion of the same file: returned unchanged. ``target``
    existing otherwise (another file's conversion, or anything else): ``FileExistsError``, nothing
    touched. A wrong hash: ``HashMismatchError`` before the GGUF is parsed.
    """
    source, target = Path(gguf_path), Path(target)
    expected = expected_sha256.lower()
    if is_converted(target, expected):
        return target
    if target.exists() or target.is_symlink():
        manifest = read_manifest(target)
        what = (f"a conversion of another file (sha256 {manifest.get('source', {}).get('sha256')})"
                if manifest else "not a finished GGUF conversion")
        raise FileExistsError(f"{target} exists and is {what}; remove it or choose another target")
    check_sha256(source, expected, what="GGUF file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        model, tokenizer = load_gguf_as_plain_model(source)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        files = sorted(p for p in partial.rglob("*") if p.is_file())
        for path in [partial, *files]:
            ordinary_mode(path)  # mkdtemp's folder and transformers' safetensors file are private
        for path in files:
            _fsync_file(path)
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": {"file": source.name, "sha256": expected},
            "model_class": type(model).__name__,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "tied_word_embeddings": _tied(model),
            "files": {
                str(p.relative_to(partial)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files
            },
            "versions": {name: _version(name) for name in ("transformers", "torch", "gguf", "tokenizers")},
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_file(partial / MANIFEST)
        fsync_dir(partial)
        try:
            os.rename(partial, target)
        except OSError:
            # another process finished the same conversion first: keep its folder
            if is_converted(target, expected):
                shutil.rmtree(partial, ignore_errors=True)
                return target
            raise
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def ensure_converted(model_config) -> Path:
    """The converted folder of a GGUF model config (``model.gguf``), converting it first when it
    is not there yet: the model stage, cached by the file's sha256. The GGUF file missing: a
    ``FileNotFoundError`` that says how to fetch it, before any compute."""
    from pilotcommit.models.fetch import KNOWN_FILES, converted_folder, model_file_path

    gguf = model_config.gguf
    target = converted_folder(gguf.file, gguf.sha256)
    if is_converted(target, gguf.sha256):
        return target
    source = model_file_path(gguf.file)
    if not source.is_file():
        known = [name for name, src in KNOWN_FILES.items() if src.file_sha256 == gguf.sha256]
        how = (f"fetch it with `python -m pilotcommit.models.fetch {known[0]}`" if known
               else "put it there or give model.gguf.file as a path")
        raise FileNotFoundError(f"model {model_config.label!r}: the GGUF file {source} is absent; {how}")
    return convert_gguf(source, gguf.sha256, target)


def load_gguf_as_plain_model(gguf_path: str | Path):
    """``(model, tokenizer)`` from a GGUF file, the model an ordinary (not quantized, saveable)
    instance of the class transformers picked, with the GGUF load's weights and generation
    config. Raises if a key does not match or a tie that the config asks for is lost."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # a fresh instance initialises its weights from the global RNG: keep the caller's stream
    with torch.random.fork_rng(devices=[]):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    if getattr(config, "tie_word_embeddings", False) and not _tied(model):
        raise RuntimeError(f"{path}: the config ties the output head to the embedding, but the rebuilt "
                           f"{type(model).__name__} does not share them")
    return model.eval(), tokenizer


def _tied(model) -> bool:
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    return output is not None and output.weight is inputs.weight


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
