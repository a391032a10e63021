"""In-process `astroreason` calls for the tests, and the one-line-error check every bad-input test makes."""

from astroreason.cli import main


def cli(capsys, *args):
    """Run `astroreason ARGS` in-process: (exit status, stdout, stderr lines)."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


def assert_one_line_error(status, err, *needles):
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("astroreason: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
