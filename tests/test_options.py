"""Options shared by `bnbench run`, `bnbench sweep` and `pytest benchmarks/` come from one
declaration each (bnbench.options): the same flag, default, help and parsing in every front end."""

from __future__ import annotations

import argparse

import pytest

from bnbench import cli, options, pytest_plugin


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


class _Group:
    """Records what the plugin adds to pytest's option group."""

    def __init__(self):
        self.added = {}

    def addoption(self, flag, **kwargs):
        self.added[flag] = kwargs


class _Parser:
    def __init__(self):
        self.group = _Group()

    def getgroup(self, name):
        return self.group


@pytest.mark.parametrize("command, declared", [("run", (*options.RUN, *options.SCALE_OUT)),
                                               ("sweep", (*options.SWEEP, *options.SCALE_OUT))])
def test_the_commands_take_the_declared_options(command, declared):
    actions = _actions(cli.build_parser().commands[command])
    for option in declared:
        action = actions[option.flag]
        assert action.default == option.default, option.flag
        assert action.help.replace("%%", "%") == option.help_text(), option.flag


def test_the_harness_takes_the_declared_options_as_text_then_parses_them_alike():
    parser = _Parser()
    pytest_plugin.pytest_addoption(parser)
    added = parser.group.added
    for option in options.HARNESS:
        assert option.flag in added, option.flag
        assert added[option.flag]["help"] == option.help_text()
    values = argparse.Namespace(**{o.dest: None for o in (*options.HARNESS, *pytest_plugin.OWN)})
    values.target, values.seeds = "0.9", "3"
    options.read_pytest(values, (*options.HARNESS, *pytest_plugin.OWN))
    assert values.target == 0.9 and values.seeds == 3 and values.epochs == options.EPOCHS.default
    assert values.peer_timeout == options.PEER_TIMEOUT.default and values.batch_stats == "sync"


@pytest.mark.parametrize("option, text, message", [
    (options.TARGET, "1.5", "--target: '1.5' must be an accuracy between 0 and 1"),
    (options.SEEDS, "two", "--seeds: 'two' is not a whole number"),
    (options.BATCH_STATS, "global", "--batch-stats: 'global' is not one of sync, local"),
    (options.CPU_DEVICES, "0", "--cpu-devices: '0' must be at least 1; or use 'auto'"),
])
def test_a_bad_value_is_one_line_naming_the_option_in_both_front_ends(option, text, message, capsys):
    values = argparse.Namespace(**{option.dest: text})
    with pytest.raises(options.BadValue, match=f"^{message}$"):
        options.read_pytest(values, (option,))
    assert cli.main(["run", option.flag, text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option.flag in err[0] and text in err[0], err


def test_per_process_options_come_from_the_declarations():
    valued, flags = options.per_process()
    assert {"--process-id", "--cpu-devices", "--data-dir", "--download-url", "--out", "--bnbench-report"} <= set(valued)
    assert "--quiet" in flags and "--epochs" not in valued


@pytest.mark.parametrize("flag, values", [("--learning-rate", ("1e-3", "1e-2")), ("--batch-size", ("16", "32"))])
def test_a_sweep_list_given_twice_is_one_line_not_the_last_value(flag, values, capsys):
    assert cli.main(["sweep", flag, values[0], flag, values[1], "--out", "never.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} given twice" in err[0]


def test_a_mirrors_query_is_not_recorded():
    assert options.recorded_command("bnbench", ["run", "--download-url", "https://m.org/fm?sig=a/b&t=1"]) == \
        "bnbench run --download-url 'https://m.org/fm?...'"
    assert options.recorded_command("bnbench", ["run", "--download-url=https://m.org/fm"]) == \
        "bnbench run --download-url=https://m.org/fm"
