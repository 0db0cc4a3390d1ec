"""Records load from the shared MATH/GSM8K files and from mapped columns; bad rows name file, line, field."""

import json

import pytest

from stat_pl.records import RecordError, RecordSource, canonical_subject, load_records


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_shared_math_train_loads_with_skills_and_solutions(shared_data):
    records = load_records(str(shared_data / "math/train.jsonl"))
    assert len(records) == 7500
    first = records[0]
    assert first.id == "train/prealgebra/704.json" and first.answer == "2" and first.level == 1
    assert first.skills == ("prime_number_theory",) and "\\boxed{2}" in first.solutions[0]
    assert sum(bool(r.skills) for r in records) == 6552


@pytest.mark.parametrize(
    "name, count",
    [("eval/gsm8k.jsonl", 1319), ("eval/aime24.jsonl", 30), ("eval/amc23.jsonl", 40), ("math/test.jsonl", 4000)],
)
def test_shared_benchmarks_load(shared_data, name, count):
    records = load_records(str(shared_data / name))
    assert len(records) == count and all(r.answer for r in records)


def test_field_mapping_and_answer_delimiter_read_hub_style_gsm8k(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "2 + 2?", "answer": "Add them: 2+2=4\n#### 1,004"}])
    source = RecordSource(str(path), fields={"problem": "question"}, answer_delimiter="####")
    (record,) = load_records(source)
    assert record.problem == "2 + 2?" and record.answer == "1004"
    assert record.solutions == ("Add them: 2+2=4",) and record.id == "tmp_path0/gsm/0".replace(
        "tmp_path0", tmp_path.name
    )


def test_hub_style_math_level_and_subject_are_normalised(tmp_path):
    row = {"problem": "p", "solution": "so $\\boxed{\\frac{1}{2}}$", "level": "Level 3", "type": "Intermediate Algebra"}
    path = write_jsonl(tmp_path / "m.jsonl", [row])
    (record,) = load_records(RecordSource(str(path), fields={"subject": "type"}))
    assert record.level == 3 and record.subject == "intermediate_algebra" and record.answer == "\\frac{1}{2}"


def test_parquet_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"problem": "p", "answer": "3", "skills": ["a b"]}]), tmp_path / "x.parquet")
    (record,) = load_records(str(tmp_path / "x.parquet"))
    assert record.skills == ("a_b",) and record.answer == "3"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "answer": "1"}, "{not json"])
    with pytest.raises(RecordError, match=r"bad.jsonl:2: malformed JSON"):
        load_records(str(path))


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "q"}])
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'answer'"):
        load_records(str(path))


def test_wrong_type_names_the_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "answer": "1", "skills": [1, 2]}])
    with pytest.raises(RecordError, match=r"bad.jsonl:1: field 'skills' must be a list of strings"):
        load_records(str(path))


def test_unknown_field_in_mapping_is_rejected():
    with pytest.raises(ValueError, match="unknown record field"):
        RecordSource("x.jsonl", fields={"questoin": "question"})


def test_a_hub_source_loads_only_when_used_and_maps_math_lightevals_columns(monkeypatch):
    """The paper configs name Hub datasets; parsing them (tests/test_configs.py) must not reach the Hub."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        solution = "There are $3$ ways, so the answer is $\\boxed{3}$."
        return [
            {"problem": "How many ways?", "level": "Level 2", "type": "Counting & Probability", "solution": solution}
        ]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = RecordSource(
        path="DigitalLearningGmbH/MATH-lighteval", split="train", name="math/train", fields={"subject": "type"}
    )
    assert calls == []
    (record,) = load_records(source)
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", None, "train")]
    assert (record.id, record.answer, record.level, record.source) == ("math/train/0", "3", 2, "math/train")
    assert canonical_subject(record).subject == "counting_and_probability"
