"""Tokenisers, the padded vocabulary, the embedded grammars, user sequence files, sequence metrics."""

import ast
import json
import random
import re

import pytest
import torch

from flowforge.data.tokens import (
    PAD,
    CharTokenizer,
    SmilesTokenizer,
    Vocabulary,
    bracket_words,
    expressions,
    is_balanced,
    is_valid_expression,
    load_sequences,
)
from flowforge.metrics.sequences import bracket_metrics, expression_metrics, sequence_metrics

# ---------------------------------------------------------------------------------------------- vocabulary


def test_round_trip_and_padding_layout():
    corpus = expressions(300, seed=0)
    v = Vocabulary.build(corpus)
    assert v.tokens[0] == PAD and v.pad_id == 0
    assert set(v.tokens[1:]) == set("0123456789+-*()")
    length = max(v.lengths(corpus))
    ids = v.encode(corpus, length)
    assert ids.shape == (300, length) and ids.dtype == torch.long
    assert v.decode(ids) == corpus
    # tokens first, then padding only: the number of non-pad ids is each string's length
    assert (ids != 0).sum(1).tolist() == [len(s) for s in corpus]
    first_pad = (ids == 0).long().argmax(1)
    for row, n, s in zip(ids, first_pad, corpus):
        if len(s) < length:
            assert n == len(s) and (row[n:] == 0).all()


def test_encode_known_ids():
    v = Vocabulary(["a", "b", "c"])
    assert v.encode(["cab", "b"], 4).tolist() == [[3, 1, 2, 0], [2, 0, 0, 0]]


def test_decode_stops_at_first_pad():
    v = Vocabulary(["1", "+"])
    x = torch.tensor([[1, 2, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    assert v.decode(x) == ["1+", "", "1111"]
    assert v.decode([[2, 1]]) == ["+1"]  # nested lists are accepted too


@pytest.mark.parametrize("bad", [3, -1])
def test_decode_rejects_ids_outside_vocabulary(bad):
    v = Vocabulary(["1", "+"])
    with pytest.raises(ValueError, match=rf"id {bad} is outside.*\[0, 3\)"):
        v.decode(torch.tensor([[1, bad]]))


def test_decode_rejects_bad_shapes_and_dtypes():
    v = Vocabulary(["a"])
    with pytest.raises(ValueError, match=r"\(N, L\).*ids\[None\]"):
        v.decode(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="integers"):
        v.decode(torch.tensor([[1.0, 0.0]]))


def test_unknown_token_error_names_token_string_and_fix():
    v = Vocabulary.build(["1+2"])
    with pytest.raises(ValueError) as e:
        v.encode(["1+2", "3*4"], 5)
    msg = str(e.value)
    assert "'3'" in msg and "'3*4'" in msg and "Vocabulary.build" in msg and "extra=['3']" in msg
    # the fix the message suggests works
    v2 = Vocabulary.build(["1+2"], extra=["3", "4", "*"])
    assert v2.decode(v2.encode(["3*4"], 5)) == ["3*4"]


def test_too_long_raise_and_drop():
    v = Vocabulary(["a"])
    with pytest.raises(ValueError, match=r"'aaaa' has 4 tokens, more than length=3.*too_long='drop'"):
        v.encode(["a", "aaaa"], 3)
    with pytest.warns(UserWarning, match=r"dropped 2 of 4 strings longer than length=3.*longest has 5"):
        ids = v.encode(["a", "aaaa", "aaa", "aaaaa"], 3, too_long="drop")
    assert v.decode(ids) == ["a", "aaa"]
    with pytest.raises(ValueError, match="unknown too_long option 'skip'"):
        v.encode(["a"], 3, too_long="skip")
    with pytest.raises(TypeError, match="not one string"):
        v.encode("aa", 3)


def test_json_round_trip_keeps_tokenizer():
    v = Vocabulary.build(["CC(=O)Cl", "c1ccccc1Br"], SmilesTokenizer())
    d = json.loads(json.dumps(v.to_dict()))
    w = Vocabulary.from_dict(d)
    assert w == v and isinstance(w.tokenizer, SmilesTokenizer)
    assert w.encode(["CCl"], 3).tolist() == v.encode(["CCl"], 3).tolist()
    c = Vocabulary.from_dict(json.loads(json.dumps(Vocabulary.build(["ab"]).to_dict())))
    assert isinstance(c.tokenizer, CharTokenizer) and c != v
    with pytest.raises(ValueError, match="unknown tokenizer 'smile'.*did you mean 'smiles'"):
        Vocabulary.from_dict({"tokenizer": "smile", "tokens": ["C"]})
    with pytest.raises(ValueError, match="'tokens' list"):
        Vocabulary.from_dict({"tokenizer": "char"})


def test_vocabulary_rejects_pad_and_duplicates():
    with pytest.raises(ValueError, match="padding token"):
        Vocabulary(["a", PAD])
    with pytest.raises(ValueError, match=r"unique.*\['a'\]"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(ValueError, match="no tokens"):
        Vocabulary.build(["", ""])


# ---------------------------------------------------------------------------------------------- SMILES


@pytest.mark.parametrize(
    "smiles, tokens",
    [
        (
            "C[C@@H](Cl)c1ccc(Br)cc1%10",
            ["C", "[C@@H]", "(", "Cl", ")", "c", "1", "c", "c", "c", "(", "Br", ")", "c", "c", "1", "%10"],
        ),
        ("[Na+].[Cl-]", ["[Na+]", ".", "[Cl-]"]),
        ("c1cc[nH]c1", ["c", "1", "c", "c", "[nH]", "c", "1"]),
        ("O=[N+]([O-])C#N", ["O", "=", "[N+]", "(", "[O-]", ")", "C", "#", "N"]),
        ("F/C=C\\F", ["F", "/", "C", "=", "C", "\\", "F"]),
        ("C%(123)CC%(123)", ["C", "%(123)", "C", "C", "%(123)"]),
        ("BrCCl", ["Br", "C", "Cl"]),
        (
            "[1*]C(=O)O [12*]c1ccccc1",
            ["[1*]", "C", "(", "=", "O", ")", "O", " ", "[12*]", "c", "1"] + ["c"] * 5 + ["1"],
        ),
        ("*C.[2H]O", ["*", "C", ".", "[2H]", "O"]),
    ],
)
def test_smiles_tokens(smiles, tokens):
    t = SmilesTokenizer()
    assert t.split(smiles) == tokens
    assert t.join(t.split(smiles)) == smiles


@pytest.mark.parametrize(
    "bad, char, pos", [("CCX", "X", 2), ("CNa", "a", 2), ("C]", "]", 1), ("C[CH", "[", 1)]
)
def test_smiles_tokenizer_refuses_uncovered_characters(bad, char, pos):
    with pytest.raises(ValueError, match=re.escape(repr(char)) + rf" at position {pos}.*CharTokenizer"):
        SmilesTokenizer().split(bad)


def test_smiles_vocabulary_keeps_multi_character_atoms():
    v = Vocabulary.build(["CCl", "[C@@H](Br)O"], SmilesTokenizer())
    assert "Cl" in v.tokens and "l" not in v.tokens and "[C@@H]" in v.tokens
    ids = v.encode(["ClC[C@@H]"], 4)
    assert (ids != 0).sum().item() == 3
    assert v.decode(ids) == ["ClC[C@@H]"]
    with pytest.raises(ValueError, match="unknown token 'N' in 'CN'"):
        v.encode(["CN"], 4)


# ---------------------------------------------------------------------------------------------- grammars


def _depth(s):
    d = m = 0
    for c in s:
        d += (c == "(") - (c == ")")
        m = max(m, d)
    return m


def test_expressions_valid_bounded_nontrivial():
    e = expressions(2000, max_length=24, seed=0)
    assert len(e) == 2000 and all(is_valid_expression(s) for s in e)
    assert all(3 <= len(s) <= 24 for s in e)
    assert max(len(s) for s in e) >= 21
    depths = [_depth(s) for s in e]
    assert sum(d >= 1 for d in depths) / len(e) > 0.4
    assert sum(d >= 2 for d in depths) / len(e) > 0.15
    assert len(set(e)) > 1000
    short = expressions(200, max_length=9, min_length=5, seed=3)
    assert all(5 <= len(s) <= 9 and is_valid_expression(s) for s in short)


def test_expressions_reproducible_by_seed():
    assert expressions(50, seed=7) == expressions(50, seed=7)
    assert expressions(50, seed=7) != expressions(50, seed=8)
    state = random.getstate()
    expressions(5, seed=0)
    assert random.getstate() == state  # no global seeding


VALID = ["0", "7", "1+2", "(1+2)*3", "((4))", "2*(3-(4*5))+6", "1-2-3", "9*9*9", "(1)*(2)"]
INVALID = [
    "", "12", "-1", "+1", "1+", "1++2", "(1", "1)", "()", "(1+2", "1+2)", "2(3)", "(1)(2)",
    "1*-2", "1**2", "1 + 2", "a+1", "1/2", "((1)", ")1(", "1+()", "*", "1=1",
]  # fmt: skip


@pytest.mark.parametrize("s", VALID)
def test_valid_expressions_accepted(s):
    assert is_valid_expression(s)


@pytest.mark.parametrize("s", INVALID)
def test_invalid_expressions_rejected(s):
    assert not is_valid_expression(s)


def _reference_valid(s):
    """The grammar via Python's own parser: + - * over single digits, nothing else."""
    if not s or any(a.isdigit() and b.isdigit() for a, b in zip(s, s[1:])) or "**" in s:
        return False
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
                return False
        elif isinstance(node, ast.Constant):
            if not (isinstance(node.value, int) and 0 <= node.value <= 9):
                return False
        elif not isinstance(node, ast.Expression | ast.operator):
            return False
    return True


def test_parser_agrees_with_python_on_random_and_mutated_strings():
    rng = random.Random(0)
    alphabet = "0129+-*()"
    strings = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    for s in expressions(600, seed=1):  # near misses: one character deleted, inserted or replaced
        i = rng.randrange(len(s))
        c = rng.choice(alphabet)
        strings += [s[:i] + s[i + 1 :], s[:i] + c + s[i:], s[:i] + c + s[i + 1 :]]
    n_valid = 0
    for s in strings:
        assert is_valid_expression(s) == _reference_valid(s), s
        n_valid += _reference_valid(s)
    assert 300 < n_valid < len(strings) - 300  # both outcomes are well represented


def test_bracket_words():
    w = bracket_words(500, max_length=16, seed=0)
    assert all(is_balanced(s) and 2 <= len(s) <= 16 for s in w)
    assert any("[" in s for s in w) and any("(" in s for s in w) and max(map(len, w)) == 16
    assert bracket_words(20, seed=4) == bracket_words(20, seed=4) != bracket_words(20, seed=5)
    for bad in ["", "(", ")(", "([)]", "(()", "[(])", "(x)", "(]"]:
        assert not is_balanced(bad), bad
    for good in ["()", "([])", "()[]", "[[()]]()"]:
        assert is_balanced(good)


# ---------------------------------------------------------------------------------------------- files


def test_load_txt(tmp_path):
    p = tmp_path / "seqs.txt"
    p.write_text("1+2\n\n  (3*4)  \nC C O\r\n\n")
    assert load_sequences(p) == ["1+2", "(3*4)", "C C O"]
    q = tmp_path / "UPPER.TXT"
    q.write_text("ab\n")
    assert load_sequences(str(q)) == ["ab"]


def test_load_smi(tmp_path):
    p = tmp_path / "m.smi"
    p.write_text("\nSMILES\tname\nCCO\tethanol\n\nc1ccccc1 benzene extra\nCl\n")
    assert load_sequences(p) == ["CCO", "c1ccccc1", "Cl"]
    q = tmp_path / "noheader.smi"
    q.write_text("CCO 1\nCCN 2\n")
    assert load_sequences(q) == ["CCO", "CCN"]
    r = tmp_path / "late.smi"  # 'smiles' past the first line is data, not a header
    r.write_text("CCO\nsmiles\n")
    assert load_sequences(r) == ["CCO", "smiles"]


def test_load_sequences_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.txt not found"):
        load_sequences(tmp_path / "missing.txt")
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(FileNotFoundError, match="folder"):
        load_sequences(tmp_path / "d.txt")
    for name, text in [("empty.txt", ""), ("blank.txt", "\n  \n\n"), ("only_header.smi", "smiles\n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match="holds no sequences"):
            load_sequences(tmp_path / name)
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(ValueError, match=r"unknown extension '\.csv'.*\.txt.*\.smi"):
        load_sequences(tmp_path / "x.csv")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_sequences(tmp_path / "bin.txt")


# ---------------------------------------------------------------------------------------------- metrics


def test_expression_metrics_known_values():
    gen = ["(1+2)*3", "(1+2)*3", "4-5", "7", "1+", "(2", "12"]
    m = expression_metrics(gen, train=["4-5", "9"])
    assert m == {"validity": 4 / 7, "uniqueness": 3 / 4, "novelty": 2 / 3}
    assert expression_metrics(["1+", "("], ["1"]) == {"validity": 0.0, "uniqueness": 0.0, "novelty": 0.0}
    assert bracket_metrics(["()", "([])", "(]"], ["()"]) == {
        "validity": 2 / 3,
        "uniqueness": 1.0,
        "novelty": 0.5,
    }
    with pytest.raises(ValueError, match="empty"):
        sequence_metrics([], [], is_valid_expression)
    with pytest.raises(TypeError, match="lists of strings"):
        expression_metrics("1+2", ["1"])


def test_generated_training_set_scores_perfect_validity():
    train = expressions(500, seed=0)
    m = expression_metrics(expressions(500, seed=1), train)
    assert m["validity"] == 1.0 and 0.0 < m["novelty"] < 1.0 and m["uniqueness"] < 1.0
