import io

import pytest
import torch

from salmonn_symbols.symbols import SymbolBook, UnknownLabelError


@pytest.fixture
def book():
    labels = ["anger", "sad", "sadness", "answer", "answer_agree", "thank you", "neutral"]
    symbols = ["kesh", "zolf", "plix", "duhr", "vamo", "trel", "gobi"]
    return SymbolBook(labels=labels, mapping=dict(zip(labels, symbols, strict=True)))


def test_whole_words_only(book):
    assert book.substitute("danger and anger") == "danger and kesh"
    assert book.substitute("angered, anger's") == "angered, kesh's"
    assert book.substitute("non-neutral neutral") == "non-neutral gobi"


def test_punctuation(book):
    assert book.substitute("(anger).") == "(kesh)."
    assert book.substitute("anger,sad;neutral!") == "kesh,zolf;gobi!"
    assert book.substitute('"sadness"') == '"plix"'


def test_labels_that_are_substrings_of_other_labels(book):
    assert book.substitute("sad sadness") == "zolf plix"
    assert book.substitute("answer answer_agree") == "duhr vamo"


def test_multi_word_labels(book):
    assert book.substitute("thank you") == "trel"
    assert book.substitute("thank  you, thanks") == "trel, thanks"


def test_case(book):
    assert book.substitute("Anger anger") == "Anger kesh"
    book.ignore_case = True
    assert book.substitute("Anger ANGER anger") == "kesh kesh kesh"
    assert book.decode_prediction(" KESH.") == "anger"


def test_instructions_left_alone_unless_asked(book):
    instruction = "Is the speaker in anger or neutral?"
    assert book.substitute(instruction, labels=[]) == instruction
    assert book.substitute(instruction, labels=["anger"]) == "Is the speaker in kesh or neutral?"


def test_single_pass_does_not_chain(book):
    book.update({"anger": "sadness_x"}, cycle=1, source="manual")  # a symbol that contains a label as a prefix
    assert book.substitute("anger sad") == "sadness_x zolf"


def test_targets_and_unknown_labels(book):
    assert book.encode_target("anger") == "kesh"
    assert book.encode_target(["anger", "sad"]) == "kesh, zolf"
    with pytest.raises(UnknownLabelError, match="unknown label 'joy'"):
        book.encode_target("joy")
    with pytest.raises(UnknownLabelError):
        book.substitute("x", labels=["joy"])


def test_decode_prediction(book):
    assert book.decode_prediction(" kesh\n") == "anger"
    assert book.decode_prediction("The answer is zolf.") == "sad"
    assert book.decode_prediction("keshy") is None
    assert book.decode_prediction("plix, kesh and plix", multi_label=True) == ["sadness", "anger"]
    assert book.decode_prediction("nothing", multi_label=True) == []


def test_mapping_must_be_one_to_one_and_complete():
    with pytest.raises(ValueError, match="share the symbol"):
        SymbolBook(labels=["a", "b"], mapping={"a": "kesh", "b": "kesh"})
    with pytest.raises(ValueError, match="missing"):
        SymbolBook(labels=["a", "b"], mapping={"a": "kesh"})
    with pytest.raises(ValueError, match="single words"):
        SymbolBook(labels=["a"], mapping={"a": "two words"})


def test_history_update_and_rollback(book):
    assert book.cycle == 0 and book.history[0].source == "random"
    book.update({"anger": "voice"}, cycle=1, source="discovered")
    book.update({"anger": "sound"}, cycle=2, source="discovered")
    assert book.symbol_history("anger") == ["kesh", "voice", "sound"]
    book.rollback(note="val/acc dropped")
    assert book.mapping["anger"] == "voice"
    assert book.history[-1].source == "rollback" and book.history[-1].cycle == 2
    assert book.label_for("voice") == "anger"
    with pytest.raises(UnknownLabelError):
        book.update({"joy": "x"}, cycle=3, source="manual")


def test_state_dict_loads_with_weights_only(book):
    book.update({"anger": "voice"}, cycle=1, source="discovered")
    buf = io.BytesIO()
    torch.save({"symbols": book.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["symbols"]
    again = SymbolBook.from_state_dict(state)
    assert again.mapping == book.mapping and again.history == book.history


def test_create_draws_symbols_for_unique_labels(llama_sym):
    book = SymbolBook.create(["alpha", "beta", "alpha", "gamma"], llama_sym, seed=0)
    assert book.labels == ["alpha", "beta", "gamma"]
    ids = book.token_ids(llama_sym)
    assert all(len(v) == 2 for v in ids.values())
