"""Multiple-choice files load in the layouts the benchmarks publish (docs/eval.md): each test
writes a few invented questions in exactly that layout, byte for byte as published (header
case, index columns, no header, answer as a letter or an index)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.errors import StropError
from strop.eval.mc_data import load_mc_file
from strop.eval.multiple_choice import pick_shots


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def test_cmmlu_csv_unnamed_index_column_and_capitalised_names(tmp_path: Path):
    path = write(
        tmp_path / "test" / "tea_culture.csv",
        ",Question,A,B,C,D,Answer\n"
        "0,哪种茶叶通常不经过发酵？,红茶,绿茶,乌龙茶,普洱熟茶,B\n"
        '1,"下列哪一项,是泡茶时常用的器具？",盖碗,铁锅,砚台,算盘,A\n',
    )
    a, b = load_mc_file(path)
    assert a.question == "哪种茶叶通常不经过发酵？"
    assert a.choices == ["红茶", "绿茶", "乌龙茶", "普洱熟茶"] and a.answer == 1
    assert b.question == "下列哪一项,是泡茶时常用的器具？" and b.answer == 0
    assert (a.origin, b.origin) == (f"{path}:2", f"{path}:3")
    assert a.subject == "tea_culture"  # CMMLU: one file per subject under test/ and dev/


def test_ceval_csv_id_and_explanation_columns(tmp_path: Path):
    path = write(
        tmp_path / "river_studies_val.csv",
        "id,question,A,B,C,D,answer,explanation\n"
        "0,一条河流的发源地通常称为____。,河口,源头,三角洲,支流,B,1. 河流开始的地方叫源头。\n"
        "1,下列哪个词描述河水流入海洋的地方？,河口,源头,分水岭,峡谷,A,\n",
    )
    a, b = load_mc_file(path)
    assert a.choices == ["河口", "源头", "三角洲", "支流"] and a.answer == 1
    assert b.answer == 0 and b.origin == f"{path}:3"
    assert a.subject == "river_studies"  # C-Eval: <subject>_val.csv / _dev.csv / _test.csv


def test_ceval_test_split_without_answers_is_refused_by_name(tmp_path: Path):
    path = write(
        tmp_path / "river_studies_test.csv",
        "id,question,A,B,C,D\n0,河流的发源地叫什么？,河口,源头,三角洲,支流\n",
    )
    with pytest.raises(StropError) as err:
        load_mc_file(path)
    assert str(err.value).startswith(f"{path}:1: no 'answer' column in the header")
    assert "val split" in str(err.value)


def test_mmlu_csv_without_a_header(tmp_path: Path):
    path = write(
        tmp_path / "kite_physics_test.csv",
        "What keeps a kite aloft?,Lift from moving air,Magnetism,Static charge,Its string alone,A\n"
        '"Which shape, of these, flies most steadily?",A flat sheet,A box kite,A brick,A stone,B\n'
        "How many lines does a stunt kite with two lines have?,1,2,3,4,B\n",
    )
    rows = load_mc_file(path)
    assert [r.answer for r in rows] == [0, 1, 1]
    assert rows[0].question == "What keeps a kite aloft?" and len(rows[0].choices) == 4
    assert rows[1].question == "Which shape, of these, flies most steadily?"
    assert [r.origin for r in rows] == [f"{path}:1", f"{path}:2", f"{path}:3"]  # no header line
    assert rows[2].choices == ["1", "2", "3", "4"] and rows[0].subject == "kite_physics"


def test_mmlu_dev_and_test_files_share_a_subject_for_shots(tmp_path: Path):
    dev = write(tmp_path / "kite_physics_dev.csv", "Do kites need wind?,Yes,No,B,C,A\n")
    test = write(tmp_path / "kite_physics_test.csv", "Can a kite fly in a vacuum?,Yes,No,x,y,B\n")
    (question,) = load_mc_file(test)
    shots = pick_shots(question, load_mc_file(dev), 1)
    assert shots[0].question == "Do kites need wind?"


def test_hf_jsonl_with_choices_list_and_index_answer(tmp_path: Path):
    rows = [
        {
            "question": "Which gas do plants take in?",
            "subject": "botany",
            "choices": ["Oxygen", "Carbon dioxide", "Helium", "Neon"],
            "answer": 1,
        },
        {
            "question": "Roots mostly absorb?",
            "subject": "botany",
            "choices": ["Water", "Light", "Sound", "Heat"],
            "answer": 0,
        },
    ]
    path = write(tmp_path / "botany.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_mc_file(path)
    assert (a.answer, b.answer) == (1, 0) and a.subject == "botany"
    assert a.choices[1] == "Carbon dioxide"


def test_jsonl_with_capitalised_keys_and_letter_answer(tmp_path: Path):
    row = {"Question": "Pick the even number.", "A": "3", "B": "8", "C": "5", "Answer": "b"}
    path = write(tmp_path / "cap.jsonl", "\ufeff" + json.dumps(row, ensure_ascii=False) + "\n")
    (ex,) = load_mc_file(path)
    assert ex.choices == ["3", "8", "5"] and ex.answer == 1


def test_parquet_export_with_choices_list(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "question": ["Which planet is closest to the Sun?", "What is frozen water?"],
            "subject": ["astronomy", "chemistry"],
            "choices": [["Mars", "Mercury", "Venus"], ["Steam", "Ice", "Mist"]],
            "answer": [1, 1],
        }
    )
    pq.write_table(table, tmp_path / "test.parquet")
    a, b = load_mc_file(tmp_path / "test.parquet")
    assert a.choices == ["Mars", "Mercury", "Venus"] and (a.answer, b.answer) == (1, 1)
    assert a.origin == f"{tmp_path / 'test.parquet'}:row 1" and b.subject == "chemistry"


def test_strop_own_csv_keeps_its_subject_column(tmp_path: Path):
    path = write(
        tmp_path / "mine_test.csv",
        "question,A,B,C,D,answer,subject\nHow many legs has a spider?,6,8,,,B,zoology\n",
    )
    (ex,) = load_mc_file(path)
    assert ex.choices == ["6", "8"] and ex.answer == 1 and ex.subject == "zoology"


def test_a_plain_file_name_gives_no_subject(tmp_path: Path):
    path = write(tmp_path / "questions.csv", "Question,A,B,Answer\nUp or down?,up,down,0\n")
    (ex,) = load_mc_file(path)
    assert ex.subject is None and ex.answer == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("prompt,A,B,answer\nq,a,b,A\n", ":1: no 'question' column in the header ('prompt'"),
        ("question,Option 1,Option 2,answer\nq,a,b,A\n", ":1: no choice columns in the header"),
        ("question,Question,A,B,answer\nq,q,a,b,A\n", "columns 'question' and 'Question' both"),
        ("question,A,B,answer\nq,a,b\n", ":2: expected 4 fields (as in the header), got 3"),
        ("q1,a,b,A\nq2,a,b\n", ":2: expected 4 fields (as in the first row), got 3"),
        ("question,A,B,answer\nq,a,b,E\n", ":2: answer 'E' is out of range for 2 choices"),
    ],
)
def test_an_unrecognised_layout_names_the_file_and_the_column(tmp_path, text, needle):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(StropError) as err:
        load_mc_file(path)
    assert str(err.value).startswith(str(path)) and needle in str(err.value)


def test_a_file_that_is_not_utf8_is_one_sentence(tmp_path: Path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("question,A,B,answer\n哪个,是,否,A\n".encode("gbk"))
    with pytest.raises(StropError, match=r"gbk\.csv.*not UTF-8 text.*save it as UTF-8"):
        load_mc_file(path)


def test_an_empty_task_file_is_an_error_not_a_nan_score(tmp_path: Path):
    from strop.errors import StropError
    from strop.eval.config import TASK_SPECS
    from strop.eval.tasks import load_examples

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    task = TASK_SPECS["multiple_choice"](name="mc", type="multiple_choice", data=str(empty))
    with pytest.raises(StropError, match="task 'mc': .*empty.csv: no examples to score"):
        load_examples(task)
