import json
import subprocess
import sys

import pytest

from bnbench import cli


def run_cli(*args):
    """The installed entry point, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "bnbench.cli", *map(str, args)], capture_output=True, text=True)


def test_variants_lists_each_variant_on_one_line(capsys):
    assert cli.main(["variants"]) == 0
    out = capsys.readouterr().out
    from bnbench.models.variants import VARIANTS
    names = [line.split()[1] if line.startswith("*") else line.split()[0]
             for line in out.splitlines() if line.strip() and not line.startswith("* the")]
    assert names == list(VARIANTS)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["run", "--variant", "resnet"], "unknown variant 'resnet'"),
    (["run", "--epochs", "ten"], "argument --epochs: 'ten' is not a whole number"),
    (["run", "--seeds", "0"], "argument --seeds: '0' must be at least 1"),
    (["run", "--learning-rate", "-1"], "must be greater than 0"),
    (["run", "--cpu-devices", "0"], "argument --cpu-devices: '0' must be at least 1; or use 'auto'"),
    (["run", "--cpu-devices", "many"], "argument --cpu-devices: 'many' is not a whole number; or use 'auto'"),
    (["run", "--out", "/proc/no/such/dir/r.json"], "cannot write to /proc/no/such/dir/r.json"),
])
def test_bad_input_gives_one_clear_line_and_no_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_out_path_that_is_a_directory_is_refused_before_training(tmp_path, capsys):
    assert cli.main(["run", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_dataset_is_one_line(tmp_path):
    result = run_cli("run", "--data-dir", tmp_path, "--epochs", "1", "--quiet")
    assert result.returncode == 2 and "no fashion_mnist in" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_run_writes_a_complete_report(idx_dir, tmp_path):
    out = tmp_path / "reports" / "run.json"
    result = run_cli("run", "--variant", "seed_plain", "--variant", "seed_bn", "--epochs", "2", "--seeds", "2",
                     "--data-dir", idx_dir, "--out", out, "--floor")
    assert result.returncode == 0, result.stderr
    assert "seed_bn" in result.stdout and "±" in result.stdout  # the summary table
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1
    env = report["environment"]
    for key in ("jax", "jaxlib", "flax", "optax", "python", "backend", "device_kind", "device_count",
                "cpu_model", "xla_flags"):
        assert key in env
    protocol = report["protocol"]
    assert protocol["source"] == "idx" and protocol["order"] == "canonical"
    assert (protocol["batch_size"], protocol["learning_rate"], protocol["epochs"]) == (32, 1e-3, 2)
    assert protocol["updates_per_epoch"] == 10  # 300 training examples: 9 full batches and one of 12
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [
        ("seed_plain", 0), ("seed_plain", 1), ("seed_bn", 0), ("seed_bn", 1)]
    for run in report["runs"]:
        assert len(run["epochs"]) == 2
        for epoch in run["epochs"]:
            assert set(epoch) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "time_s"}
            assert 0 <= epoch["val_accuracy"] <= 1 and epoch["time_s"] > 0
        assert 0 <= run["test_accuracy"] <= 1 and run["compile_time_s"] > 0
    summary = report["summary"]["seed_bn"]
    values = [r["epochs"][-1]["val_accuracy"] for r in report["runs"] if r["variant"] == "seed_bn"]
    assert summary["val_accuracy"]["mean"] == pytest.approx(sum(values) / 2)
    lo, hi = summary["val_accuracy"]["ci95"]
    assert lo <= summary["val_accuracy"]["mean"] <= hi
    assert summary["floor"]["median_ratio"] > 0


@pytest.mark.slow
def test_failed_run_leaves_an_earlier_report_intact(idx_dir, tmp_path):
    out = tmp_path / "run.json"
    out.write_text('{"earlier": true}')
    result = run_cli("run", "--variant", "seed_plain", "--epochs", "1", "--data-dir", tmp_path / "missing",
                     "--out", out)
    assert result.returncode == 2
    assert json.loads(out.read_text()) == {"earlier": True}
    assert list(tmp_path.iterdir()) == [out]  # no temporary files left behind


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--variant", "group_norm:groups=3"], "group_norm: 3 groups do not divide the 784 features of the input"),
    (["--variant", "seed_bn:deepth=3"], "'deepth=3' is not FIELD=VALUE with a field of seed_bn's model"),
    (["--variant", "batchnorm"], "unknown variant 'batchnorm'"),
    (["--dataset", "cifar10"], "cifar10 is not prepared in tfds' data dir"),
    (["--dataset", "svhn"], "unknown dataset 'svhn'"),
])
def test_bad_variants_and_datasets_are_one_line_before_any_training(idx_dir, args, message):
    data_dir = [] if "--dataset" in args else ["--data-dir", idx_dir]
    result = run_cli("run", *args, *data_dir, "--epochs", "1", "--quiet")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the dataset line, then the error


@pytest.mark.slow
@pytest.mark.parametrize("variant, message", [
    ("seed_bn:activation=tanh", "activation='tanh': choose one of relu, leaky_relu"),
    ("seed_bn:placement=foo", "placement='foo': choose one of after_activation, before_activation"),
    ("seed_bn:hidden=(300.5,)", "hidden=(300.5,): must be one or more whole numbers"),
    ("conv_plain:channels=(8,8,8,8,8,8)", "6 stages of 2x2 pooling leave nothing of 28x28 images"),
    ("seed_bn:eval_batch_size=0", "eval_batch_size=0: must be 1 or more"),
    ("seed_bn:num_classes=2", "num_classes=2 but the data has 10 classes"),
    ("seed_bn:norm=None", "norm_inputs=True needs a norm"),
    ("conv_group_norm:channels=[4,8],groups=3", "3 groups do not divide the 4 features of convolution 1"),
])
def test_fields_out_of_range_are_one_line_before_any_training(idx_dir, variant, message):
    result = run_cli("run", "--variant", variant, "--data-dir", idx_dir, "--epochs", "1", "--quiet")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


BAD_NUMBERS = [
    ("run", "--epochs", "-1"), ("run", "--epochs", "abc"), ("run", "--batch-size", "0"), ("run", "--seeds", "0"),
    ("run", "--learning-rate", "-1e-3"), ("run", "--learning-rate", "nan"), ("run", "--target", "1.5"),
    ("run", "--data-parallel", "0"), ("run", "--peer-timeout", "0"), ("run", "--num-processes", "x"),
    ("sweep", "--epochs", "0"), ("sweep", "--seeds", "-2"), ("sweep", "--reference-batch-size", "0"),
    ("sweep", "--eval-every", "0"), ("sweep", "--target", "0"), ("sweep", "--budget", "hours"),
    ("compare", "--fail-on-regression", "-5"), ("compare", "--gate", "speed"), ("compare", "--format", "html"),
]


@pytest.mark.parametrize("command, option, value", BAD_NUMBERS)
def test_every_commands_bad_numbers_are_one_line_with_a_pointer_to_help(command, option, value, capsys, tmp_path):
    args = [command, option, value] + (["--out", str(tmp_path / "x.json")] if command == "sweep" else []) + \
        (["r.json"] if command == "compare" else [])
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bnbench: error: {command}: argument {option}") and err.count("\n") == 1, err
    assert f"(see 'bnbench {command} --help')" in err and "usage:" not in err


def test_version_and_help_of_every_argument(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("bnbench ")
    parser = cli.build_parser()
    assert "``" not in parser.format_help()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subcommands.items():
        for action in sub._actions:
            assert action.help, f"bnbench {name} {action.option_strings or action.dest} has no help"


def test_the_readmes_shell_commands_parse(tmp_path):
    """Every ```bash block of the README is valid shell (an unquoted `channels=(16,32)` is not)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```bash\n")[1:]]
    assert blocks
    for block in blocks:
        checked = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert checked.returncode == 0, (block, checked.stderr)


@pytest.mark.slow
def test_compare_and_report_read_reports_without_starting_jax_or_flax(tmp_path):
    """Commands that only read JSON import neither JAX nor Flax (seconds of start-up, and a reader
    of reports may not have them working): checked in a fresh interpreter."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "results"
    code = (
        "import sys, contextlib, io\n"
        "from bnbench import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert cli.main(['compare', {str(results / 'cpu-notebook-5seeds.json')!r}, "
        f"{str(results / 'cpu-amd-epyc-notebook-5seeds.json')!r}]) == 0\n"
        f"    assert cli.main(['report', {str(results / 'cpu-mlp-variants-5seeds.json')!r}, "
        f"{str(results / 'cpu-sweep-lr.json')!r}, '--out', {str(tmp_path / 'page')!r}]) == 0\n"
        "print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
