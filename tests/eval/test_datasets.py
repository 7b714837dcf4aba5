"""Data files: the packaged samples, the documented schemas, errors naming file, line and field, sources."""

import json

import pytest

from gptoss.errors import GptossError
from gptoss.eval import datasets
from gptoss.eval.datasets import (
    ChoiceQuestion,
    IntegerProblem,
    RubricConversation,
    load_eval,
    load_file,
    parse_data_spec,
)


def test_packaged_samples_load():
    sets = {name: load_eval(name, ["samples"]).items for name in datasets.EVALS}
    assert [len(sets[n]) for n in datasets.EVALS] == [6, 8, 8, 4]
    assert all(isinstance(i, IntegerProblem) for i in sets["aime"])
    assert all(isinstance(i, ChoiceQuestion) and len(i.options) == 4 for i in sets["gpqa"] + sets["mmlu"])
    assert {i.theme for i in sets["healthbench"]} == {"emergency_referrals", "context_seeking", "global_health"}
    assert any(r.points < 0 for i in sets["healthbench"] for r in i.rubric)
    assert sets["aime"][5].answer == 432  # "432" in the file, an int here
    assert sets["gpqa"][0].options[sets["gpqa"][0].correct] == "-13.6 eV"
    assert sets["mmlu"][1].options[sets["mmlu"][1].correct] == "cos(x)"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_jsonl_and_csv_schemas(tmp_path):
    aime = write(tmp_path, "a.csv", 'problem,answer\nWhat is 2+2?,4\n"Sum 1,000 and 1","1,001"\n')
    items = load_file("aime", aime)
    assert [(i.id, i.answer) for i in items] == [("2", 4), ("3", 1001)]
    gpqa = write(
        tmp_path,
        "g.jsonl",
        json.dumps({"id": "x", "question": "Q?", "correct_answer": "yes", "incorrect_answers": ["no", "maybe"]}) + "\n",
    )
    (q,) = load_file("gpqa", gpqa)
    assert q.options == ("yes", "no", "maybe") and q.correct == 0
    mmlu = write(
        tmp_path,
        "m.jsonl",
        json.dumps({"question": "Q?", "choices": ["a", "b", "c"], "answer": 2})
        + "\n"
        + json.dumps({"question": "R?", "A": "x", "B": "y", "answer": "b"})
        + "\n",
    )
    q1, q2 = load_file("mmlu", mmlu)
    assert (q1.options, q1.correct, q2.options, q2.correct) == (("a", "b", "c"), 2, ("x", "y"), 1)
    hb = write(
        tmp_path, "h.jsonl", json.dumps({"prompt": "Is it ok?", "rubrics": [{"criterion": "c", "points": 3}]}) + "\n"
    )
    (c,) = load_file("healthbench", hb)
    assert isinstance(c, RubricConversation) and c.messages == ({"role": "user", "content": "Is it ok?"},)
    assert c.theme == "unspecified"


@pytest.mark.parametrize(
    "name, filename, text, message",
    [
        (
            "aime",
            "a.jsonl",
            '{"problem": "p", "answer": "seven"}\n',
            r"a.jsonl:1: field 'answer' must be an integer, found 'seven'",
        ),
        (
            "aime",
            "a.jsonl",
            '{"problem": "p", "answer": 1}\n{"answer": 2}\n',
            r"a.jsonl:2: missing field 'problem' or 'question'",
        ),
        ("aime", "a.jsonl", '{"problem": "p", "answer": 1}\n{oops\n', r"a.jsonl:2: not valid JSON"),
        (
            "aime",
            "a.jsonl",
            '{"id": 1, "problem": "p", "answer": 1}\n{"id": 1, "problem": "q", "answer": 2}\n',
            r"a.jsonl:2: duplicate id '1' \(first at line 1\)",
        ),
        ("aime", "a.jsonl", "\n", r"a.jsonl: no aime items found"),
        ("aime", "a.txt", "x", r"unknown data file type '.txt'"),
        (
            "mmlu",
            "m.csv",
            "Question,A,B,C,D,Answer\nQ,1,2,3,4,E\n",
            r"m.csv:2: field 'answer' must be a letter A-D or an index 0-3, found 'E'",
        ),
        ("gpqa", "g.csv", "Question,Correct Answer\nQ,yes\n", r"g.csv:2: missing field 'incorrect_answers'"),
        (
            "healthbench",
            "h.jsonl",
            '{"prompt": [{"role": "user", "content": "x"}], "rubrics": [{"criterion": "c", "points": "5"}]}\n',
            r"h.jsonl:1: rubrics\[0\].points must be a number, found '5'",
        ),
        (
            "healthbench",
            "h.jsonl",
            '{"prompt": [{"role": "bot", "content": "x"}], "rubrics": [{"criterion": "c", "points": 5}]}\n',
            r"h.jsonl:1: prompt\[0\] must be",
        ),
        (
            "healthbench",
            "h.jsonl",
            '{"prompt": "x", "rubrics": [{"criterion": "c", "points": -5}]}\n',
            r"h.jsonl:1: 'rubrics' has no item with positive points",
        ),
    ],
)
def test_schema_errors_name_file_line_and_field(tmp_path, name, filename, text, message):
    path = write(tmp_path, filename, text)
    with pytest.raises(GptossError, match=message):
        load_file(name, path)


def test_missing_file(tmp_path):
    with pytest.raises(GptossError, match="no such data file"):
        load_eval("aime", [str(tmp_path / "nope.jsonl")])


def test_data_spec(tmp_path):
    assert parse_data_spec(None, ["aime"]) == {"aime": ["samples"]}
    assert parse_data_spec("hub", ["aime", "gpqa"]) == {"aime": ["hub"], "gpqa": ["hub"]}
    (tmp_path / "aime.csv").write_text("problem,answer\np,1\n")
    assert parse_data_spec(str(tmp_path), ["aime"]) == {"aime": [str(tmp_path / "aime.csv")]}
    with pytest.raises(GptossError, match="no gpqa.jsonl, gpqa.csv or gpqa.parquet"):
        parse_data_spec(str(tmp_path), ["aime", "gpqa"])
    assert parse_data_spec("aime=a.jsonl+b.jsonl,gpqa=samples", ["aime", "gpqa"]) == {
        "aime": ["a.jsonl", "b.jsonl"],
        "gpqa": ["samples"],
    }
    with pytest.raises(GptossError, match="names no source for gpqa"):
        parse_data_spec("aime=a.jsonl", ["aime", "gpqa"])
    with pytest.raises(GptossError, match="unknown eval 'aimee'"):
        parse_data_spec("aimee=a.jsonl", ["aime"])


def test_several_files_get_prefixed_ids(tmp_path):
    for part in ("I", "II"):
        (tmp_path / f"aime-{part}.jsonl").write_text('{"id": "1", "problem": "p", "answer": 1}\n')
    ds = load_eval("aime", [str(tmp_path / "aime-I.jsonl"), str(tmp_path / "aime-II.jsonl")])
    assert [i.id for i in ds.items] == ["aime-I:1", "aime-II:1"]


def test_hub_only_when_named(tmp_path, monkeypatch):
    calls = []

    def fake_download(repo_id, filename, repo_type, revision=None):
        calls.append((repo_id, filename, repo_type, revision))
        path = tmp_path / filename.replace("/", "_")
        path.write_text('{"question": "q", "answer": 3}\n')
        return str(path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    load_eval("aime", ["samples"])
    assert calls == []  # samples never touch the hub
    ds = load_eval("aime", ["hub"])
    assert [c[:3] for c in calls] == [
        ("opencompass/AIME2025", "aime2025-I.jsonl", "dataset"),
        ("opencompass/AIME2025", "aime2025-II.jsonl", "dataset"),
    ]
    assert len(ds.items) == 2
    load_eval("aime", ["hf://me/data/sub/set.jsonl@v1"])
    assert calls[-1] == ("me/data", "sub/set.jsonl", "dataset", "v1")
    with pytest.raises(GptossError, match="healthbench has no Hugging Face hub default"):
        load_eval("healthbench", ["hub"])


def test_hub_failure_is_one_clear_line(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore lines")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(
        GptossError, match=r"hf://a/b/c.jsonl: cannot fetch from the Hugging Face hub \(We couldn't connect"
    ):
        load_eval("aime", ["hf://a/b/c.jsonl"])
