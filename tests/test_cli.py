"""The command line explains itself and the demo runs end to end on real data."""

import re

from typer.testing import CliRunner

from geta.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output


def test_demo_runs_and_prints_the_report() -> None:
    result = runner.invoke(app, ["demo", "--steps", "60", "--sparsity", "0.25", "--optimizer", "adam"])
    assert result.exit_code == 0, result.output
    assert "compact model" in result.output and "rel. BOPs" in result.output
    assert re.search(r"group sparsity\s+25\.0%", result.output)


def test_demo_rejects_an_unknown_optimizer() -> None:
    result = runner.invoke(app, ["demo", "--optimizer", "lion"])
    assert result.exit_code != 0 and "lion" in result.output
