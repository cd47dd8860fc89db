"""Tokenizer folders as real checkpoints ship them: a Vicuna-style SentencePiece ``tokenizer.model`` alone."""

import io
import json
import sys

import pytest

from salmonn_symbols.cli import main
from salmonn_symbols.model.tokenizer import load_tokenizer, tiny_corpus
from salmonn_symbols.symbols import SymbolTokenizer


@pytest.fixture(scope="module")
def vicuna_style_folder(tmp_path_factory):
    """A folder as Vicuna v1.1 ships its tokenizer: tokenizer.model (SentencePiece BPE with byte fallback, trained
    here on the packaged corpus) and a tokenizer_config.json naming LlamaTokenizer; no tokenizer.json."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()),
        model_writer=model,
        vocab_size=1000,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    folder = tmp_path_factory.mktemp("vicuna_tok")
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder, spm.SentencePieceProcessor(model_proto=model.getvalue())


def test_a_sentencepiece_only_folder_loads_and_encodes_as_sentencepiece_does(vicuna_style_folder, capsys):
    folder, sp = vicuna_style_folder
    tok = load_tokenizer(str(folder))
    text = "The speaker sounds calm, quiet and tired."
    assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
    assert tok.decode(sp.encode(text)) == text
    # the symbol core works on it: 2-token symbols from its vocabulary, through the command line as well
    assert SymbolTokenizer(tok).vocab_size == sp.get_piece_size()
    assert main(["generate-symbols", "--tokenizer", str(folder), "--labels", "calm", "angry", "--seed", "0"]) == 0
    assert all(len(ids) == 2 for ids in json.loads(capsys.readouterr().out)["token_ids"].values())


def test_without_sentencepiece_the_error_names_the_folder_and_the_package(vicuna_style_folder, monkeypatch, capsys):
    folder, _ = vicuna_style_folder
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as in an environment without the package
    with pytest.raises(ImportError, match=r"reading it needs the sentencepiece package: pip install sentencepiece"):
        load_tokenizer(str(folder))
    assert main(["generate-symbols", "--tokenizer", str(folder), "--labels", "a", "b"]) == 2
    assert f"{folder}: the tokenizer is a SentencePiece tokenizer.model" in capsys.readouterr().err


def test_a_folder_without_tokenizer_files_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no tokenizer files"):
        load_tokenizer(str(tmp_path))
