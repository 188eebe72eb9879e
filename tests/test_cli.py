"""The command line explains itself and the demo runs end to end on real data."""

from typer.testing import CliRunner

from geta.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output


def test_demo_runs_and_prints_the_report() -> None:
    result = runner.invoke(app, ["demo", "--epochs", "2", "--qat-epochs", "1", "--bits", "6"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "rel. BOPs" in result.output
