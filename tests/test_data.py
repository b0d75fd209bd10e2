"""course_utils.data: sources, answers, difficulty, prompts, targets, splits (part 03)."""

import csv
import json
import sys
import time
import types
from fractions import Fraction
from pathlib import Path

import pytest

from course_utils import data
from course_utils.config import TrainingConfig
from course_utils.data import (
    DIFFICULTIES,
    SYSTEM_PROMPT,
    Example,
    SourceUnavailable,
    build_prompt,
    canonical_number,
    count_steps,
    difficulty_of,
    format_solution,
    gold_answer,
    grpo_record,
    load_gsm8k,
    load_splits,
    parse_number,
)

SHARED = data.SHARED_GSM8K
REAL_HOST_REACHABLE = data.host_reachable
needs_gsm8k = pytest.mark.skipif(not (SHARED / "train.jsonl").is_file(), reason=f"no GSM8K copy at {SHARED}")

SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    """Each test sees no cached loads or network probes, and never touches the network."""
    monkeypatch.setattr(data, "_cache", {})
    monkeypatch.setattr(data, "_probe_cache", {})
    monkeypatch.setattr(data, "host_reachable", lambda host, *a, **k: False)


def _write_jsonl(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


ROWS = {
    "train": [{"question": f"Q{i}: what is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
              for i in range(30)],
    "test": [{"question": f"T{i}: what is {i} * 2?", "answer": f"{i} * 2 = <<{i}*2={2 * i}>>{2 * i}\n#### {2 * i:,}"}
             for i in range(600, 610)],
}


@pytest.fixture
def gsm_dir(tmp_path, monkeypatch):
    folder = tmp_path / "gsm8k"
    for split, rows in ROWS.items():
        _write_jsonl(folder, split, rows)
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(folder))
    return folder


# --- answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("72", "72"), ("1,080", "1080"), ("$1,234.50", "1234.5"), ("-5", "-5"), ("−7", "-7"), ("+3", "3"),
    ("18.00", "18"), (".5", "0.5"), ("50%", "50"), ("3/4", "0.75"), ("1/3", "1/3"), ("1 1/2", "1.5"),
    ("-1 1/2", "-1.5"), ("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{4}", "0.75"), ("\\boxed{72}", "72"),
    ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\$18", "18"), ("\\boxed{\\text{18}}", "18"), ("72.", "72"),
    ("0", "0"), ("-0", "0"), ("1,000,000", "1000000"),
])
def test_canonical_number(text, expected):
    assert canonical_number(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "2+3", "18 apples", "1,23", "3/0", "1e5", "x" * 500, "1 2", "\\boxed{"])
def test_not_one_number(text):
    assert parse_number(text) is None and canonical_number(text) is None


def test_parse_number_is_exact():
    assert parse_number("0.1") + parse_number("0.2") == Fraction(3, 10)
    assert parse_number("123456789012345678901234567890") == 123456789012345678901234567890


def test_gold_answer():
    assert gold_answer(SOLUTION) == "72"
    assert gold_answer("steps\n#### 1,080") == "1080"
    assert gold_answer("steps\n#### -3\n") == "-3"
    assert gold_answer("odd gold\n#### forty") == "forty"  # not a number: kept as text
    with pytest.raises(ValueError, match="no final-answer line '#### N'"):
        gold_answer("She has 5 apples.")
    with pytest.raises(ValueError, match="no answer after it"):
        gold_answer("She has 5 apples.\n####  ")
    with pytest.raises(ValueError, match="must be a string"):
        gold_answer(None)


def test_steps_and_difficulty():
    assert count_steps(SOLUTION) == 2 and difficulty_of(SOLUTION) == "easy"
    three = "a <<1+1=2>>\nb <<2+1=3>>\nc <<3+1=4>>\n#### 4"
    assert difficulty_of(three) == "medium"
    assert difficulty_of(three.replace("#### 4", "d <<4+1=5>>\ne <<5+1=6>>\n#### 6")) == "hard"
    no_annotations = "one\ntwo\nthree\nfour\nfive\n#### 5"  # falls back to counting lines
    assert count_steps(no_annotations) == 5 and difficulty_of(no_annotations) == "hard"


# --- prompts and targets -------------------------------------------------------------------

def test_build_prompt_is_gemma_chat_with_the_instruction_in_the_user_turn():
    prompt = build_prompt("  What is 2 + 2?  ")
    assert prompt == f"<start_of_turn>user\n{SYSTEM_PROMPT}\n\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"
    assert "<reasoning>" in SYSTEM_PROMPT and "</answer>" in SYSTEM_PROMPT and "one number" in SYSTEM_PROMPT
    assert "<bos>" not in prompt and "system" not in prompt.split("\n")[0]
    for bad in ("", "   ", None, 3):
        with pytest.raises(ValueError, match="non-empty question"):
            build_prompt(bad)


def test_format_solution():
    ex = Example("q", SOLUTION, "72", "easy", "test")
    target = format_solution(ex)
    assert target == ("<reasoning>\nNatalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n"
                      "</reasoning>\n<answer>72</answer>")
    assert "<<" not in target and "####" not in target
    assert format_solution(SOLUTION) == target  # a bare solution string works too


def test_grpo_record():
    ex = Example("How many?", SOLUTION, "72", "easy", "test")
    rec = grpo_record(ex)
    assert rec == {"prompts": build_prompt("How many?"), "answer": "72", "question": "How many?", "difficulty": "easy"}


# --- the generator -------------------------------------------------------------------------

def test_synthetic_is_seeded_exact_and_covers_every_difficulty():
    a = load_gsm8k("train", source="synthetic", limit=300)
    b = load_gsm8k("train", source="synthetic", limit=300)
    assert a == b  # same seed, same problems
    assert a[:50] == load_gsm8k("train", source="synthetic", limit=50)  # a limit is a prefix
    assert {e.difficulty for e in a} == set(DIFFICULTIES)
    assert all(e.source == "synthetic" and e.difficulty == difficulty_of(e.solution) for e in a)
    assert len({e.question for e in a}) == len(a)
    for e in a:
        assert gold_answer(e.solution) == e.answer and int(e.answer) >= 0
        # every calculator annotation is true: the answers are exact
        for expr, result in (m.split("=") for m in data._ANNOTATION.findall(e.solution)):
            expr = expr.strip("<")
            assert _eval_simple(expr) == Fraction(result.strip(">"))


def _eval_simple(expr: str) -> Fraction:
    """Evaluate the generator's own + - * / annotations, left to right with * and / first."""
    import re

    tokens = re.findall(r"\d+|[-+*/]", expr)
    terms, ops = [Fraction(tokens[0])], []
    for op, num in zip(tokens[1::2], tokens[2::2]):
        if op in "*/":
            terms[-1] = terms[-1] * Fraction(num) if op == "*" else terms[-1] / Fraction(num)
        else:
            ops.append(op)
            terms.append(Fraction(num))
    total = terms[0]
    for op, t in zip(ops, terms[1:]):
        total = total + t if op == "+" else total - t
    return total


def test_synthetic_sizes_and_no_train_test_overlap():
    train = load_gsm8k("train", source="synthetic")
    test = load_gsm8k("test", source="synthetic")
    assert (len(train), len(test)) == (7473, 1319)
    assert not {e.question for e in train} & {e.question for e in test}
    mix = {d: sum(e.difficulty == d for e in train) / len(train) for d in DIFFICULTIES}
    assert 0.25 < mix["easy"] < 0.45 and 0.35 < mix["medium"] < 0.55 and 0.1 < mix["hard"] < 0.3


# --- sources -------------------------------------------------------------------------------

def test_local_folder_jsonl(gsm_dir, capsys):
    test = load_gsm8k("test", source="local")
    assert [e.answer for e in test[:2]] == ["1200", "1202"]  # "1,200" normalised
    assert all(e.source == "local" for e in test)
    assert load_gsm8k("train", source="local", limit=5)[-1].question.startswith("Q4")
    assert "from local" in capsys.readouterr().out


def test_local_folder_kaggle_csv(tmp_path, monkeypatch):
    folder = tmp_path / "kaggle_csv"
    folder.mkdir()
    for split, rows in ROWS.items():
        with (folder / f"main_{split}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["question", "answer"])
            writer.writeheader()
            writer.writerows(rows)
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(folder))
    assert len(load_gsm8k("train", source="local")) == 30


def test_bad_local_files_name_the_problem(tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    _write_jsonl(folder, "train", [{"question": "q", "answer": "no final line"}])
    _write_jsonl(folder, "test", [{"q": "wrong field"}])
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(folder))
    with pytest.raises(ValueError, match=r"train.jsonl: row 1: solution has no final-answer line"):
        load_gsm8k("train", source="local")
    with pytest.raises(ValueError, match="lacks the GSM8K fields"):
        load_gsm8k("test", source="local")
    (folder / "test.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        load_gsm8k("test", source="local")


def test_named_source_that_is_missing_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SourceUnavailable, match="COURSE_GSM8K_DIR=.*nowhere has no train.jsonl"):
        load_gsm8k("train", source="local")
    with pytest.raises(SourceUnavailable, match="huggingface.co cannot be reached"):
        load_gsm8k("train", source="huggingface")


def test_auto_falls_through_quickly_offline_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    examples = load_gsm8k("test", limit=5)
    assert time.perf_counter() - start < 5
    out = capsys.readouterr().out
    assert all(e.source == "synthetic" for e in examples) and len(examples) == 5
    assert "auto picked synthetic" in out
    for reason in ("local: COURSE_GSM8K_DIR", "huggingface: huggingface.co cannot be reached"):
        assert reason in out


def test_auto_prefers_local(gsm_dir, capsys):
    assert load_gsm8k("train")[0].source == "local"
    assert "auto picked local" in capsys.readouterr().out


def test_huggingface_path(monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return ROWS[split]

    monkeypatch.setattr(data, "host_reachable", lambda host, *a, **k: True)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    got = load_gsm8k("test", source="huggingface")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert len(got) == 10 and got[0].source == "huggingface"


def test_huggingface_failure_falls_through(monkeypatch, tmp_path, capsys):
    def load_dataset(*a, **k):
        raise ConnectionError("offline cache miss")

    monkeypatch.setattr(data, "host_reachable", lambda host, *a, **k: host == "huggingface.co")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(tmp_path / "nowhere"))
    assert load_gsm8k("test", limit=2)[0].source == "synthetic"
    assert "offline cache miss" in capsys.readouterr().out


def test_host_reachable_never_hangs(monkeypatch):
    import socket

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def stuck(*a, **k):  # a DNS lookup or connect that hangs far longer than the probe waits
        time.sleep(5)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", stuck)
    start = time.perf_counter()
    assert REAL_HOST_REACHABLE("example.invalid", timeout=0.2) is False
    assert time.perf_counter() - start < 2
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # with a proxy the client decides
    assert REAL_HOST_REACHABLE("example.invalid", timeout=0.2) is True


def test_bad_arguments():
    with pytest.raises(ValueError, match="split='val'"):
        load_gsm8k("val")
    with pytest.raises(ValueError, match="source='web'"):
        load_gsm8k("train", source="web")
    with pytest.raises(ValueError, match="limit=0"):
        load_gsm8k("train", source="synthetic", limit=0)


# --- splits --------------------------------------------------------------------------------

def _keys(examples):
    return {" ".join(e.question.lower().split()) for e in examples}


def test_splits_smoke_never_overlap():
    cfg = TrainingConfig.for_profile("smoke")
    splits = load_splits(cfg)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [cfg.train_examples, cfg.val_examples, cfg.eval_examples]
    tr, va, te = (_keys(splits[k]) for k in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)
    assert splits == load_splits(cfg)  # seeded
    other = load_splits(TrainingConfig.for_profile("smoke", seed=7))
    assert other["val"] != splits["val"] and other["test"] == splits["test"]


def test_splits_drop_train_questions_that_are_in_test(tmp_path, monkeypatch):
    rows = dict(ROWS)
    rows["train"] = ROWS["train"] + ROWS["test"][:3]  # three test questions leaked into train
    folder = tmp_path / "leaky"
    for split, r in rows.items():
        _write_jsonl(folder, split, r)
    monkeypatch.setenv("COURSE_GSM8K_DIR", str(folder))
    cfg = TrainingConfig.for_profile("smoke", data_source="local", train_examples=None, val_examples=5,
                                     eval_examples=None)
    splits = load_splits(cfg)
    assert len(splits["test"]) == 10 and len(splits["val"]) == 5 and len(splits["train"]) == 25
    assert not _keys(splits["train"]) & _keys(splits["test"])
    with pytest.raises(ValueError, match="val_examples=40 leaves no training data"):
        load_splits(TrainingConfig.for_profile("smoke", data_source="local", val_examples=40))


@needs_gsm8k
def test_real_gsm8k_splits_cpu_profile(monkeypatch):
    monkeypatch.delenv("COURSE_GSM8K_DIR", raising=False)
    splits = load_splits(TrainingConfig.for_profile("cpu", data_source="auto"))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [2000, 50, 200]
    assert splits["test"][0].source == "local"
    tr, va, te = (_keys(splits[k]) for k in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)


@needs_gsm8k
def test_real_gsm8k_loads_whole(monkeypatch):
    monkeypatch.delenv("COURSE_GSM8K_DIR", raising=False)
    train, test = load_gsm8k("train", source="local"), load_gsm8k("test", source="local")
    assert (len(train), len(test)) == (7473, 1319)
    assert {e.difficulty for e in train} == set(DIFFICULTIES)
    assert all(canonical_number(e.answer) == e.answer for e in train + test)


def test_full_size_profiles_never_fall_back_to_the_generator_silently(monkeypatch, capsys):
    """tpu/gpu with data_source='auto' and no GSM8K anywhere: an error naming the fixes, not a
    full-size run on toy problems. Asking for the generator, or a small profile, still works."""
    from course_utils import data

    real_load = data._load

    def unavailable(split, source):
        if source == "synthetic":
            return real_load(split, source)
        raise SourceUnavailable(f"{source}: not here (test)")

    monkeypatch.setattr(data, "_load", unavailable)
    small = dict(train_examples=10, val_examples=5, eval_examples=5)
    for profile in ("tpu", "gpu"):
        with pytest.raises(SourceUnavailable, match="COURSE_GSM8K_DIR") as err:
            load_splits(TrainingConfig.for_profile(profile, data_source="auto", **small))
        assert f"'{profile}' profile trains on GSM8K" in str(err.value) and "data_source='synthetic'" in str(err.value)
    assert "local: not here" in capsys.readouterr().out  # why each source failed was printed
    assert len(load_splits(TrainingConfig.for_profile("tpu", data_source="synthetic", **small))["train"]) == 10
    assert len(load_splits(TrainingConfig.for_profile("cpu", data_source="auto", **small))["train"]) == 10
