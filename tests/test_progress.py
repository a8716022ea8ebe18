"""Progress bars show on a terminal (or when asked) and stay quiet in CI and in Prefect's logs."""

from deepcluster.progress import progress_bar


def test_progress_bars_are_quiet_off_a_terminal_unless_asked(capsys):
    assert list(progress_bar(range(3), "epochs", "epoch")) == [0, 1, 2]  # pytest's stderr is not a terminal
    assert capsys.readouterr().err == ""
    assert list(progress_bar(range(3), "epochs", "epoch", show=True)) == [0, 1, 2]
    shown = capsys.readouterr().err
    assert "epochs: 100%" in shown and "3/3" in shown
    assert list(progress_bar(range(3), "epochs", "epoch", show=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
