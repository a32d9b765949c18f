"""The closed-vocabulary word tokenizer refuses words it does not know, from Python and from the CLI."""

from __future__ import annotations

import pytest

from ldmkit import InputError, cli, get_registry


def _text_conditioner():
    params = {"n_embed": 8, "n_layer": 1, "vocab_size": 8, "max_seq_len": 4, "tokenizer": "words"}
    params["vocabulary"] = ["red", "circle", "a"]
    return get_registry().create("conditioner", "transformer-text", params)


def test_known_words_are_encoded_and_unknown_ones_listed():
    cond = _text_conditioner()
    assert cond.tokenize(["A red circle."]).tolist() == [[4, 2, 3, 0]]
    with pytest.raises(InputError, match=r"unknown words hexagon, purple; the model knows: a, circle, red"):
        cond(["a purple hexagon"])


def test_the_cli_exits_2_on_an_unknown_word(tmp_path, capsys):
    code = cli.main(
        ["generate", "--task", "text2img", "--prompt", "a purple hexagon", "-n", "1", "--out", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown words hexagon, purple" in err and "red" in err
    assert not list(tmp_path.glob("*.png"))
