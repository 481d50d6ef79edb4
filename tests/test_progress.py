"""countclip.progress: a line per quarter in a log, in-place redraws on a terminal, rate and ETA."""

from countclip.progress import Progress, format_duration


def test_a_log_gets_one_line_per_quarter_and_a_final_one():
    lines = []
    progress = Progress("[stage]", 100, "steps", lines.append, interactive=False)
    for step in range(5, 101, 5):
        progress.update(step, f"loss={1 / step:.3f}")
    progress.close()  # already closed at 100: no second final line
    assert [line.split(" (")[0] for line in lines] == ["[stage] 25/100 steps", "[stage] 50/100 steps",
                                                        "[stage] 75/100 steps", "[stage] 100/100 steps"]
    assert "ETA" in lines[0] and "steps/s" in lines[0] and lines[0].endswith("loss=0.040")
    assert lines[-1].startswith("[stage] 100/100 steps (100%) in ") and "ETA" not in lines[-1]


def test_the_last_update_crossing_a_quarter_prints_one_final_line():
    lines = []
    progress = Progress("[x]", 40, "steps", lines.append, interactive=False)
    progress.update(25)
    progress.update(40)
    progress.close()
    assert [line.split(" (")[0] for line in lines] == ["[x] 25/40 steps", "[x] 40/40 steps"]


def test_a_stage_that_stops_early_still_ends_its_line():
    lines = []
    progress = Progress("[build]", 1000, "rows", lines.append, interactive=False)
    progress.update(100)
    progress.close()
    assert lines == [lines[0]] and lines[0].startswith("[build] 100/1000 rows (10%)")


def test_a_terminal_line_is_redrawn_in_place(capsys):
    progress = Progress("[x]", 10, "rows", interactive=True)
    progress.update(3)
    progress.update(10)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("\r\033[K[x] 3/10 rows") and "\r\033[K[x] 10/10 rows" in out


def test_durations_read_naturally():
    assert [format_duration(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]
