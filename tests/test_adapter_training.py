"""Adapter training: the NCE and batch losses against hand-computed numbers, groups, the trainer,
offline training from a real call log, and the CLI."""

from __future__ import annotations

import json
import math
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blackbox_sdk._exceptions import AdapterError
from blackbox_sdk.adapter import (
    Adapter,
    AdapterConfig,
    RankingGroup,
    TrainConfig,
    batch_energy_loss,
    build_groups,
    cli_main,
    evaluate,
    groups_from_log,
    line_prefixes,
    nce_loss,
    read_log,
    split_groups,
    train,
    train_from_log,
)
from blackbox_sdk.adapter._feedback import logged_question, read_records, training_record
from blackbox_sdk.call_log import CallLog, CallRecord
from blackbox_sdk.local import default_encoder_path, free_port

CAPITALS = {
    "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Egypt": "Cairo", "Chile": "Santiago",
    "Poland": "Warsaw", "Vietnam": "Hanoi", "Canada": "Ottawa", "Turkey": "Ankara", "Spain": "Madrid",
    "Greece": "Athens", "Ireland": "Dublin", "Cuba": "Havana", "Iran": "Tehran", "Italy": "Rome",
    "Germany": "Berlin", "Russia": "Moscow", "China": "Beijing", "Sweden": "Stockholm", "Austria": "Vienna",
    "Portugal": "Lisbon", "Mexico": "Mexico City", "India": "New Delhi", "Japan": "Tokyo",
}  # fmt: skip

SCORES = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, 9.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])


def _lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


@pytest.mark.parametrize(
    ("temperature", "l2", "expected"),
    [
        pytest.param(1.0, 0.0, ((_lse(2, 1, 0) - 2) + (_lse(0.5, 1.5) - 0.5)) / 2, id="plain"),
        pytest.param(2.0, 0.0, ((_lse(1, 0.5, 0) - 1) + (_lse(0.25, 0.75) - 0.25)) / 2, id="temperature"),
        pytest.param(1.0, 0.1, ((_lse(2, 1, 0) - 2) + (_lse(0.5, 1.5) - 0.5)) / 2 + 0.1 * (4 + 1 + 0 + 0.25 + 2.25) / 5, id="l2"),
    ],
)
def test_nce_loss_matches_hand_computed_values_and_ignores_padding(temperature: float, l2: float, expected: float) -> None:
    assert nce_loss(SCORES, MASK, temperature=temperature, l2=l2).item() == pytest.approx(expected, rel=1e-6)


def test_nce_gradient_raises_the_positive_and_lowers_the_negatives() -> None:
    scores = SCORES.clone().requires_grad_(True)
    nce_loss(scores, MASK).backward()
    assert scores.grad is not None
    assert (scores.grad[:, 0] < 0).all()
    assert (scores.grad[0, 1:] > 0).all() and scores.grad[1, 1] > 0
    assert scores.grad[1, 2] == 0  # padding gets no gradient


@pytest.mark.parametrize(
    ("temperature", "l2", "expected"),
    [
        pytest.param(1.0, 0.0, (-2 - 0.5) / 2 - (-1 + 0) / 2, id="plain"),
        pytest.param(5.0, 0.0, ((-2 - 0.5) / 2 - (-1 + 0) / 2) / 5, id="temperature"),
        pytest.param(5.0, 1.0, ((-2 - 0.5) / 2 - (-1 + 0) / 2) / 5 + (4 + 1 + 0 + 0.25) / 4, id="paper-code-defaults"),
    ],
)
def test_batch_energy_loss_matches_the_official_code_form(temperature: float, l2: float, expected: float) -> None:
    scores = torch.tensor([2.0, 1.0, 0.0, 0.5])
    positive = torch.tensor([True, False, False, True])
    assert batch_energy_loss(scores, positive, temperature=temperature, l2=l2).item() == pytest.approx(expected, rel=1e-6)


def test_batch_energy_loss_without_negatives_counts_only_positives() -> None:
    scores = torch.tensor([1.0, 3.0])
    assert batch_energy_loss(scores, torch.tensor([True, True])).item() == pytest.approx(-2.0)


def test_line_prefixes_grow_line_by_line() -> None:
    assert line_prefixes("a\nb\n\nc") == ["a", "a\nb", "a\nb\n\nc"]
    assert line_prefixes("one line") == ["one line"]


def test_build_groups_pairs_each_positive_with_distinct_negatives_and_counts_copies() -> None:
    groups = build_groups("q", ["right", " right ", "also right"], ["wrong", "Wrong.", "right", ""])
    assert groups == [
        RankingGroup("q", "right", ("wrong", "Wrong."), (3, 2, 2)),
        RankingGroup("q", "also right", ("wrong", "Wrong."), (1, 2, 2)),
    ]
    assert groups[0].log_copies() == pytest.approx([math.log(3), math.log(2), math.log(2)])
    assert RankingGroup("q", "p", ("n", "m")).log_copies() == [0.0, 0.0, 0.0]
    assert build_groups("q", ["right"], []) == []
    assert build_groups("q", [], ["wrong"]) == []


def test_ranking_metrics_judge_groups_the_way_score_picks_among_samples(fresh_adapter: Adapter) -> None:
    question = "What is the capital of Canada?"
    samples = ["The capital of Canada is Toronto."] * 5 + ["The capital of Canada is Ottawa."] * 2 + ["Montreal."]
    right = "The capital of Canada is Ottawa."
    groups = build_groups(question, [s for s in samples if s == right], [s for s in samples if s != right])
    scores = fresh_adapter.score(question, samples)
    picks_right = samples[max(range(len(samples)), key=lambda i: scores[i])] == right
    assert evaluate(fresh_adapter, groups).top1_accuracy == float(picks_right)


def test_build_groups_with_prefixes_never_marks_a_shared_first_line_negative() -> None:
    groups = build_groups("q", ["step 1\nanswer 5"], ["step 1\nanswer 6"], expand_prefixes=True)
    assert {g.positive for g in groups} == {"step 1", "step 1\nanswer 5"}
    assert all(g.negatives == ("step 1\nanswer 6",) for g in groups)


def test_split_groups_keeps_each_question_on_one_side() -> None:
    groups = [RankingGroup(f"q{i % 10}", f"p{i}", ("n",)) for i in range(30)]
    train_part, held = split_groups(groups, 0.3, seed=1)
    assert {g.question for g in train_part}.isdisjoint({g.question for g in held})
    assert len({g.question for g in held}) == 3 and len(train_part) + len(held) == 30


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"loss": "hinge"}, id="unknown-loss"),
        pytest.param({"temperature": 0.0}, id="zero-temperature"),
        pytest.param({"eval_fraction": 1.0}, id="nothing-left-to-train"),
        pytest.param({"groups_per_batch": 0}, id="empty-batch"),
        pytest.param({"l2": -1.0}, id="negative-l2"),
    ],
)
def test_bad_train_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(AdapterError):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def _capital_groups() -> list[RankingGroup]:
    """Real text: the right capital of the asked country against other countries' capitals."""
    rng = random.Random(0)
    names = sorted(CAPITALS)
    groups = []
    for country in names:
        others = rng.sample([n for n in names if n != country], 4)
        groups += build_groups(
            f"What is the capital of {country}?",
            [f"The capital of {country} is {CAPITALS[country]}."],
            [f"The capital of {other} is {CAPITALS[other]}." for other in others],
        )
    return groups


@pytest.fixture(scope="module")
def fresh_adapter() -> Adapter:
    torch.set_num_threads(1)
    return Adapter.create(AdapterConfig(trainable_layers=1), seed=0, device="cpu")


@pytest.mark.parametrize("loss", ["nce", "batch"])
def test_training_raises_held_out_ranking_accuracy(loss: str) -> None:
    torch.set_num_threads(1)
    adapter = Adapter.create(AdapterConfig(trainable_layers=1), seed=0, device="cpu")
    train_part, held = split_groups(_capital_groups(), 0.34, seed=0)
    before = evaluate(adapter, held)
    config = TrainConfig(epochs=2, lr=2e-4, groups_per_batch=4, warmup_steps=2, progress=False, loss=loss, temperature=1.0 if loss == "nce" else 5.0)
    result = train(adapter, train_part, config, eval_groups=held)
    after = evaluate(adapter, held)
    assert after.pair_accuracy >= before.pair_accuracy + 0.25
    assert after.pair_accuracy >= 0.85
    assert result.evals[-1]["pair_accuracy"] == pytest.approx(after.pair_accuracy)
    assert len(result.steps) == 2 * math.ceil(len(train_part) / 4)


def test_a_training_run_that_diverges_is_an_adapter_error_not_a_nan_adapter() -> None:
    torch.set_num_threads(1)
    adapter = Adapter.create(AdapterConfig(trainable_layers=1), seed=0, device="cpu")
    config = TrainConfig(epochs=2, lr=1e6, groups_per_batch=4, warmup_steps=0, progress=False, grad_clip=1e9)
    with pytest.raises(AdapterError, match="diverged"):
        train(adapter, _capital_groups(), config)


def test_training_with_no_groups_is_an_adapter_error(fresh_adapter: Adapter) -> None:
    with pytest.raises(AdapterError, match="no training groups"):
        train(fresh_adapter, [])


def _write_log(path: Path) -> None:
    """A real call log: 12 questions, each with feedback of a different kind."""
    kinds = ["label", "preferred", "reward", "reference"]
    with CallLog(path) as log:
        for i, country in enumerate(sorted(CAPITALS)[:12]):
            other = sorted(CAPITALS)[(i + 5) % len(CAPITALS)]
            right, wrong = f"The capital of {country} is {CAPITALS[country]}.", f"The capital of {country} is {CAPITALS[other]}."
            question = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is the capital of {country}?"}]}
            rec = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request=question, candidates=[wrong, right, "I don't know."], chosen=[0])
            log.record(rec)
            kind = kinds[i % 4]
            if kind == "label":
                log.feedback(rec.call_id, label="incorrect")
                log.feedback(rec.call_id, preferred=1)
            elif kind == "preferred":
                log.feedback(rec.call_id, preferred=1)
            elif kind == "reward":
                log.feedback(rec.call_id, reward=-1.0, reference=right)
            else:
                log.feedback(rec.call_id, reference=right, label="incorrect")
        failed = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request={"messages": []}, error="APIError: boom")
        log.record(failed)


def test_groups_from_log_use_every_kind_of_feedback(tmp_path: Path) -> None:
    _write_log(tmp_path / "calls.db")
    records = read_log(tmp_path / "calls.db")
    assert len(records) == 13
    groups = groups_from_log(records)
    by_question = {g.question: g for g in groups}
    assert len(by_question) == 12 and all(q.startswith("What is the capital of") for q in by_question)
    chile = by_question["What is the capital of Chile?"]
    assert chile.positive == "The capital of Chile is Santiago." and "The capital of Chile is Santiago." not in chile.negatives
    assert all(g.positive.endswith(f"{CAPITALS[g.question[23:-1]]}.") for g in groups)


def test_a_reference_on_a_failed_call_is_a_positive_and_its_candidates_are_not_judged(tmp_path: Path) -> None:
    """docs/call-log.md allows a reference on a failed call: the trainer uses it, but not the cut candidates' labels."""
    question = {"messages": [{"role": "user", "content": "What is 2+2?"}]}
    with CallLog(tmp_path / "calls.db") as log:
        shown = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request=question, candidates=["5"], chosen=[0])
        failed = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request=question, candidates=["3", "4"], error="APIError: cut")
        log.record(shown)
        log.record(failed)
        log.feedback(shown.call_id, label="incorrect")
        log.feedback(failed.call_id, reference="4", preferred=0)
    [group] = groups_from_log(read_log(tmp_path / "calls.db"))
    assert group.positive == "4" and list(group.negatives) == ["5"]


def test_a_raters_correction_replaces_the_earlier_rating_of_the_same_answer(tmp_path: Path) -> None:
    """Feedback rows are kept oldest first: a later label or reward of the same answer, and a later preference, are what
    training uses (a mistaken "correct" would otherwise stay a positive for good: a text judged good is never a negative)."""
    question = {"messages": [{"role": "user", "content": "What is 2+2?"}]}
    with CallLog(tmp_path / "calls.db") as log:
        relabelled = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request=question, candidates=["5", "4"], chosen=[0])
        rewarded = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request=question, candidates=["22", "4"], chosen=[0])
        preferred = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request=question, candidates=["4", "3"], chosen=[0])
        for rec in (relabelled, rewarded, preferred):
            log.record(rec)
        log.feedback(relabelled.call_id, label="correct")  # a slip of the rater's ...
        log.feedback(relabelled.call_id, label="incorrect")  # ... put right
        log.feedback(rewarded.call_id, reward=1.0)
        log.feedback(rewarded.call_id, reward=-1.0)
        log.feedback(preferred.call_id, preferred=1)
        log.feedback(preferred.call_id, preferred=0, reference="4")
    [group] = groups_from_log(read_log(tmp_path / "calls.db"))
    assert group.positive == "4" and sorted(group.negatives) == ["22", "3", "5"]


@pytest.mark.parametrize(
    ("route", "request_"),
    [
        ("chat.completions", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]}),
        ("chat.completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]}),
        ("responses", {"input": "What is 2+2?", "instructions": "Be brief."}),
        ("responses", {"input": [{"role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]}]}),
        ("completions", {"prompt": "What is 2+2?"}),
    ],
)
def test_groups_come_from_calls_as_the_client_logs_them(tmp_path: Path, route: str, request_: dict[str, object]) -> None:
    """The route names and request shapes the client itself writes (chat as "chat.completions"), each read for its question."""
    with CallLog(tmp_path / "calls.db") as log:
        rec = CallRecord(endpoint_host="127.0.0.1", model="m", route=route, request=request_, candidates=["5", "4"], chosen=[0])
        log.record(rec)
        log.feedback(rec.call_id, preferred=1)
    [group] = groups_from_log(read_log(tmp_path / "calls.db"))
    assert group.question == "What is 2+2?" and group.positive == "4" and list(group.negatives) == ["5"]


def test_read_log_takes_the_jsonl_export_too(tmp_path: Path) -> None:
    _write_log(tmp_path / "calls.db")
    with CallLog(tmp_path / "calls.db") as log:
        log.export_jsonl(tmp_path / "calls.jsonl")
    assert read_log(tmp_path / "calls.jsonl") == read_log(tmp_path / "calls.db")


def test_read_log_reads_texts_holding_line_separators_whole(tmp_path: Path) -> None:
    """U+2028, U+2029, a form feed and NEL inside a logged answer are text, not line ends: the log and its export read whole."""
    answer = "Paris\u2028is\u2029the\x0ccapital\x85."
    with CallLog(tmp_path / "calls.db") as log:
        rec = CallRecord(endpoint_host="h", model="m", route="chat", request={"messages": [{"role": "user", "content": "Capital?"}]},
                         candidates=[answer, "Lyon."], chosen=[0])
        log.record(rec)
        log.feedback(rec.call_id, preferred=0)
        log.export_jsonl(tmp_path / "calls.jsonl")
    for source in ("calls.db", "calls.jsonl"):
        [record] = read_log(tmp_path / source)
        assert record["candidates"] == [answer, "Lyon."]
    [group] = groups_from_log(read_log(tmp_path / "calls.db"))
    assert group.positive == answer and list(group.negatives) == ["Lyon."]


def test_read_log_names_the_byte_that_is_not_utf8(tmp_path: Path) -> None:
    _write_log(tmp_path / "calls.db")
    with CallLog(tmp_path / "calls.db") as log:
        log.export_jsonl(tmp_path / "calls.jsonl")
    good = (tmp_path / "calls.jsonl").read_bytes()
    (tmp_path / "bad.jsonl").write_bytes(good + b'{"format": "\xff"}\n')
    with pytest.raises(AdapterError, match=f"not UTF-8 text at byte {len(good) + 12}"):
        read_log(tmp_path / "bad.jsonl")


def test_training_keeps_of_each_call_only_what_it_reads(tmp_path: Path) -> None:
    """`adapter train` holds each call's question, candidates and feedback, not its whole request: the groups are the same."""
    _write_log(tmp_path / "calls.db")
    whole = read_log(tmp_path / "calls.db")
    slim = read_records(tmp_path / "calls.db", training_record)
    assert [record["request"] for record in slim[:2]] == [{"prompt": logged_question(record)} for record in whole[:2]]
    assert all(set(record) == {"call_id", "route", "request", "candidates", "feedback", "error"} for record in slim)
    assert groups_from_log(slim) == groups_from_log(whole) and len(groups_from_log(slim)) > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param('{"format": "blackbox-calllog/9"}\n', "not a blackbox-calllog/1 record", id="other-format"),
        pytest.param("{oops\n", "not JSON", id="not-json"),
    ],
)
def test_read_log_refuses_what_it_cannot_read(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(AdapterError, match=message):
        read_log(tmp_path / "bad.jsonl")


def test_train_from_log_writes_adapter_curve_and_metrics(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _write_log(tmp_path / "calls.db")
    config = TrainConfig(epochs=1, lr=1e-4, groups_per_batch=4, eval_fraction=0.25, progress=False)
    report = train_from_log(tmp_path / "calls.db", tmp_path / "adapters" / "capitals", adapter_config=AdapterConfig(trainable_layers=1), train_config=config, device="cpu")
    out = tmp_path / "adapters" / "capitals"
    assert {"adapter.safetensors", "adapter_config.json", "README.md", "curve.png", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["calls"] == 13 and 0.0 <= report["pair_accuracy"] <= 1.0 and report["eval_groups"] > 0
    assert json.loads((out / "metrics.json").read_text())["pair_accuracy"] == report["pair_accuracy"]
    loaded = Adapter.load(out, device="cpu")
    assert "call log calls.db" in loaded.metadata["trained_on"]
    assert "12 questions" in (out / "README.md").read_text()


def test_cli_trains_from_the_log_and_prints_the_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path / "calls.db")
    argv = ["--log", str(tmp_path / "calls.db"), "--out", str(tmp_path / "cli"), "--epochs", "0", "--trainable-layers", "0", "--warmup-steps", "3", "--no-progress"]
    assert cli_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["calls"] == 13 and printed["out"] == str(tmp_path / "cli")
    loaded = Adapter.load(tmp_path / "cli", device="cpu")
    assert loaded.config.trainable_layers == 0 and loaded.metadata["training"]["warmup_steps"] == 3


def test_cli_retrains_the_adapter_folder_it_runs_in_with_out_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`--out .` inside an adapter folder (allowed: it holds an adapter): the swap renames the working directory away,
    so curve.png and metrics.json, written to the relative path after it, were a FileNotFoundError traceback."""
    _write_log(tmp_path / "calls.db")
    live = tmp_path / "live"
    argv = ["--log", str(tmp_path / "calls.db"), "--epochs", "0", "--trainable-layers", "0", "--no-progress"]
    assert cli_main([*argv, "--out", str(live)]) == 0
    revision = Adapter.load(live, device="cpu").revision
    monkeypatch.chdir(live)
    assert cli_main([*argv, "--out", "."]) == 0
    assert {"curve.png", "metrics.json", "README.md"} <= {p.name for p in live.iterdir()}
    assert Adapter.load(live, device="cpu").revision != revision
    assert (live / "README.md").read_text().startswith("# live\n")  # the folder's name, not an empty title
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.db", "live"]


def _no_file_over(size: int) -> None:
    """In the child, before it runs: files may not grow past `size` bytes (a write beyond fails EFBIG, as on a full disk)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


@pytest.mark.parametrize(
    ("limit", "model", "message"),
    [
        pytest.param(200_000, ["--lora-rank", "8", "--trainable-layers", "-1"], "can't write the adapter to {out}: File too large", id="its-deltas"),
        pytest.param(10_000, ["--trainable-layers", "0"], "the adapter is saved in {out}, but its curve.png", id="its-curve"),
    ],
)
def test_cli_that_cant_write_its_files_says_so_in_one_line(tmp_path: Path, limit: int, model: list[str], message: str) -> None:
    """A write that fails (a full disk, a file size limit: 1.3 MB of LoRA deltas, a 17 kB curve) was an OSError traceback."""
    _write_log(tmp_path / "calls.db")
    with CallLog(tmp_path / "calls.db") as log:
        log.export_jsonl(tmp_path / "calls.jsonl")  # read without writing (SQLite's shared memory file is 32 kB)
    argv = ["--log", str(tmp_path / "calls.jsonl"), "--out", str(tmp_path / "out"), "--epochs", "0", "--no-progress", *model]
    done = subprocess.run([sys.executable, "-m", "blackbox_sdk", "adapter", "train", *argv], capture_output=True, text=True,
                          preexec_fn=lambda: _no_file_over(limit), timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "blackbox-sdk: " + message.format(out=tmp_path / "out") in done.stderr
    if limit == 200_000:  # the save failed: nothing of it is left
        assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.db", "calls.jsonl"]
    else:  # the adapter is whole and loads
        assert Adapter.load(tmp_path / "out", device="cpu").config.trainable_layers == 0


def test_cli_reports_a_log_without_usable_feedback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with CallLog(tmp_path / "calls.db") as log:
        log.record(CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", request={"messages": [{"role": "user", "content": "hi"}]}, candidates=["a", "b"], chosen=[0]))
    assert cli_main(["--log", str(tmp_path / "calls.db"), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "no question has both a positive and a negative" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--log", str(tmp_path / "nope.db"), "--out", str(tmp_path / "out")]) == 1
    assert "no call log" in capsys.readouterr().err


def test_cli_names_a_database_log_it_cant_reach_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://someone:hunter2-secret@127.0.0.1:{free_port()}/calls"
    assert cli_main(["--log", url, "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blackbox-sdk: can't open the call log postgresql://someone@127.0.0.1:")
    assert err.count("postgresql://") == 1 and "hunter2" not in err


def _export_line(**feedback: object) -> str:
    """One JSONL export record of a call with two candidates and one feedback item."""
    return _export_record(feedback=[feedback])


def _export_record(**fields: object) -> str:
    """One JSONL export record of a call with two candidates and a preference, with `fields` replacing its own."""
    return json.dumps({"format": "blackbox-calllog/1", "call_id": "c1", "route": "chat", "request": {"messages": [{"role": "user", "content": "hi"}]},
                       "candidates": ["a", "b"], "feedback": [{"preferred": 1}], **fields}) + "\n"


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        pytest.param(bytes(range(256)) * 8, [], "not UTF-8", id="binary-file"),
        pytest.param(b"SQLite format 3\x00" + b"garbage" * 64, [], "a call log is an SQLite file this SDK wrote", id="corrupt-sqlite"),
        pytest.param(_export_line(candidate="0", label="incorrect").encode(), [], "candidate's index", id="index-as-text"),
        pytest.param(_export_line(candidate=0, reward="high").encode(), [], "a number", id="reward-as-text"),
        # hand-edited records of other shapes than the export writes: AttributeError, KeyError and TypeError tracebacks before
        pytest.param(_export_record(request="hi").encode(), [], "'request' must be an object", id="request-as-text"),
        pytest.param(_export_record(candidates={"0": "a"}).encode(), [], "'candidates' must be a list of texts", id="candidates-a-mapping"),
        pytest.param(_export_record(candidates=[1, 2]).encode(), [], "'candidates' must be a list of texts", id="candidates-of-numbers"),
        pytest.param(_export_record(feedback=5).encode(), [], "'feedback' must be a list", id="feedback-a-number"),
        pytest.param(_export_line(candidate=0, label="correct").encode(), ["--device", "bogus"], "device 'bogus'", id="bad-device"),
        # torch names it, but it is not here (no such GPU, or torch without CUDA): an AssertionError traceback before
        pytest.param(_export_line(candidate=0, label="correct").encode(), ["--device", "cuda:99"], "device 'cuda:99' can't be used here", id="absent-device"),
    ],
)
def test_cli_refuses_a_bad_log_or_device_with_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, extra: list[str], message: str
) -> None:
    (tmp_path / "calls.log").write_bytes(content)
    assert cli_main(["--log", str(tmp_path / "calls.log"), "--out", str(tmp_path / "out"), "--no-progress", *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("blackbox-sdk: ")
    assert not (tmp_path / "out").exists()


def test_cli_stores_a_relative_base_encoder_path_resolved_so_the_adapter_loads_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--base ./enc` was stored as "enc": loading the adapter from another working directory found no encoder there."""
    _write_log(tmp_path / "calls.db")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "enc").symlink_to(default_encoder_path())
    monkeypatch.chdir(tmp_path / "work")
    argv = ["--log", "../calls.db", "--out", "../out", "--base", "./enc", "--epochs", "0", "--trainable-layers", "0", "--no-progress"]
    assert cli_main(argv) == 0
    monkeypatch.chdir(tmp_path)
    loaded = Adapter.load("out", device="cpu")
    assert loaded.config.base_model == str(tmp_path / "work" / "enc")
    assert f"Base encoder: `{tmp_path / 'work' / 'enc'}`" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("option", ["lr", "temperature", "l2"])
def test_an_infinite_training_option_is_refused_before_any_work(option: str) -> None:
    """`--l2 inf` failed at the first step telling to lower the learning rate; `--temperature inf` trained on no gradient."""
    with pytest.raises(AdapterError, match=f"{option} must be finite, not inf"):
        TrainConfig(**{option: math.inf})
