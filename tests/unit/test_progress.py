"""Progress off a terminal: plain lines with done/total, rate and time left, then one at the
end; nothing when disabled."""

from __future__ import annotations

import io

from strop import progress as P


def test_plain_lines_say_done_total_rate_and_eta_then_the_total_time(monkeypatch):
    clock = iter([0.0, 10.0, 20.0, 30.0, 40.0, 40.0, 40.0])
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()  # not a terminal, as a log file or CI
    with P.Progress(40, "base model: answering", "prompts", every=10.0, stream=out) as bar:
        for _ in range(2):
            bar.advance(10)  # at t=10 s and t=20 s
    lines = out.getvalue().splitlines()
    assert lines[0] == "base model: answering: 10/40 prompts (25%), 1.00 prompts/s, eta 0m30s"
    assert lines[1] == "base model: answering: 20/40 prompts (50%), 1.00 prompts/s, eta 0m20s"
    assert lines[-1].startswith("base model: answering: 20/40 prompts (50%)")  # closed early


def test_the_last_line_reports_the_whole_time_and_disabled_prints_nothing():
    out = io.StringIO()
    with P.Progress(3, "t", "prompts", every=3600, stream=out) as bar:
        bar.advance(3)
    assert out.getvalue().count("\n") == 1 and "3/3 prompts (100%)" in out.getvalue()
    assert ", done in 0m00s" in out.getvalue()
    quiet = io.StringIO()
    with P.Progress(3, "t", stream=quiet, enabled=False) as bar:
        bar.advance(3)
    assert quiet.getvalue() == ""


def test_generate_reports_progress_when_the_output_is_not_a_terminal(capsys, tiny_llama_dir):
    from strop.infer import GenerationParams, generate
    from strop.models.load import load_model

    model, tok, _ = load_model(str(tiny_llama_dir))
    generate(
        model,
        tok,
        ["hi", "there", "you"],
        GenerationParams(max_new_tokens=2, batch_size=2),
        progress="base model: answering",
    )
    err = capsys.readouterr().err
    assert "base model: answering: 3/3 prompts (100%)" in err and "done in" in err


def test_a_long_batch_reports_from_inside_its_decode_loop(capsys, tiny_llama_dir):
    """One batch of all prompts: off a terminal the engine's decode steps still report."""
    from strop import progress
    from strop.infer import GenerationParams, generate
    from strop.models.load import load_model

    model, tok, _ = load_model(str(tiny_llama_dir))
    params = GenerationParams(max_new_tokens=6, batch_size=8)
    original = progress.Progress.__init__

    def every_step(self, *a, **k):  # a line at every heartbeat instead of every 10 s
        original(self, *a, **{**k, "every": 0.0})

    try:
        progress.Progress.__init__ = every_step
        generate(model, tok, ["hi", "there"], params, progress="answering")
    finally:
        progress.Progress.__init__ = original
    err = capsys.readouterr().err
    assert "answering: 0/2 prompts (0%)" in err and "; decode step 1" in err
