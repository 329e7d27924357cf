"""No report is lost or replaced unasked: claims on a report's path (io.ReportClaim), the default
path of `bnbench run`, and `bnbench report`'s folder (io.ReportFolder)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from report_helpers import made_report, write

from bnbench import cli
from bnbench.errors import BnbenchError
from bnbench.record.io import MANIFEST, PathTaken, ReportClaim, ReportFolder, claim_default, lock_path


def test_an_existing_report_is_kept_unless_replacing_is_asked(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"old": 1}')
    with pytest.raises(PathTaken, match=r"r.json exists: pass --force to replace it, or name another file"):
        ReportClaim(path)
    assert path.read_text() == '{"old": 1}' and not lock_path(path).exists()
    with ReportClaim(path, replace=True) as claim:
        assert claim.write_json({"new": 2}) == path
    assert json.loads(path.read_text()) == {"new": 2} and not lock_path(path).exists()


def test_a_second_writer_of_one_path_stops_before_it_trains(tmp_path):
    path = tmp_path / "r.json"
    first = ReportClaim(path)
    with pytest.raises(PathTaken, match=rf"r.json is being written by bnbench pid {os.getpid()}"):
        ReportClaim(path, replace=True)  # --force does not override another writer
    first.write_json({"a": 1})
    first.release()
    with ReportClaim(path, replace=True):  # free again once the first is done
        pass


def test_a_file_removed_under_a_claim_is_no_conflict(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{}")
    with ReportClaim(path, replace=True) as claim:
        path.unlink()
        assert claim.write_json({"mine": 1}) == path and claim.moved_to is None


def test_a_link_is_written_through_and_locked_at_its_target(tmp_path):
    target, link = tmp_path / "store" / "target.json", tmp_path / "link.json"
    target.parent.mkdir()
    target.write_text("{}")
    link.symlink_to(target)
    with ReportClaim(link, replace=True) as claim:
        with pytest.raises(PathTaken):
            ReportClaim(target, replace=True)
        claim.write_json({"new": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"new": 1}


def test_contradictory_options_are_one_line(tmp_path, capsys):
    assert cli.main(["run", "--out", str(tmp_path / "a.json"), "--no-save"]) == 2
    assert "--no-save and --out together" in capsys.readouterr().err
    assert cli.main(["sweep", "--out", str(tmp_path / "a.json"), "--resume", "--force"]) == 2
    assert "--resume and --force together" in capsys.readouterr().err
    assert cli.main(["compare", "a.json", "--gate", "all"]) == 2
    assert "add --fail-on-regression PCT" in capsys.readouterr().err
    assert cli.main(["run", "--resume"]) == 2
    assert "bnbench: error: run: unrecognized arguments: --resume (see 'bnbench run --help')" in capsys.readouterr().err


@pytest.mark.slow  # seconds: kept out of the 2-minute default tier
def test_a_killed_page_leaves_nothing_that_stops_the_next(tmp_path):
    source = write(tmp_path / "r.json", made_report())
    folder = tmp_path / "page"
    (folder / f"{MANIFEST}.abc.tmp").mkdir(parents=True)  # a staging folder of a killed page
    (folder / f"{MANIFEST}.abc.tmp" / "README.md").write_text("half")
    assert cli.main(["report", str(source), "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [MANIFEST]


def test_a_file_changed_under_a_claim_sends_the_report_to_a_new_name(tmp_path):
    path = tmp_path / "r.json"
    with ReportClaim(path) as claim:
        path.write_text('{"someone": "else"}')  # a writer that takes no lock
        written = claim.write_json({"mine": 1})
        assert claim.moved_to == written != path and written.parent == tmp_path and written.name.startswith("r.")
        assert claim.write_json({"mine": 2}) == written  # a sweep's later writes follow it
    assert json.loads(path.read_text()) == {"someone": "else"}
    assert json.loads(written.read_text()) == {"mine": 2}


@pytest.mark.slow
def test_a_killed_writer_leaves_no_lock_that_stops_the_next(tmp_path):
    path = tmp_path / "r.json"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bnbench.record.io import ReportClaim; "
                               f"c = ReportClaim({str(path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(PathTaken, match=f"bnbench pid {holder.pid}"):
        ReportClaim(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with ReportClaim(path):  # the lock file is still there; the kernel dropped its lock
        pass


def test_default_paths_of_runs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = claim_default("run"), claim_default("run")
    assert first.path != second.path and first.path.parent == second.path.parent == Path("reports")
    assert first.path.name.startswith("run-") and second.path.stem.endswith("-2")
    first.release(), second.release()


def _race(path: str, results, index: int, barrier) -> None:
    barrier.wait()
    try:
        claim = ReportClaim(path)
    except PathTaken:
        results[index] = "refused"
        return
    time.sleep(0.05)  # training
    claim.write_json({"writer": index})
    claim.release()
    results[index] = "written"


@pytest.mark.slow
def test_two_writers_racing_for_one_path_never_both_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")  # not fork: the test process runs JAX's threads
    for round_ in range(20):
        path = tmp_path / f"race-{round_}.json"
        results, barrier = context.Manager().dict(), context.Barrier(2)
        writers = [context.Process(target=_race, args=(str(path), results, i, barrier)) for i in range(2)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(30)
        outcomes = sorted(results.values())
        assert outcomes == ["refused", "written"], (round_, outcomes)
        winner = next(i for i, r in results.items() if r == "written")
        assert json.loads(path.read_text()) == {"writer": winner}


@pytest.mark.slow
def test_two_cli_runs_with_one_out_one_writes_the_other_stops_in_one_line(idx_dir, tmp_path):
    out = tmp_path / "same.json"
    common = ["--epochs", "1", "--data-dir", idx_dir, "--quiet", "--out", out]
    runs = [subprocess.Popen([sys.executable, "-m", "bnbench.cli", "run", "--variant", variant, *map(str, common)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for variant in ("seed_plain", "seed_bn")]
    done = [(p.wait(300), p.stderr.read()) for p in runs]
    assert sorted(rc for rc, _ in done) == [0, 2], done
    rc_refused, err = next(d for d in done if d[0] == 2)
    assert "bnbench: error: " in err and "is being written by bnbench pid" in err and err.count("\n") == 1
    winner = ("seed_plain", "seed_bn")[[rc for rc, _ in done].index(0)]
    assert list(json.loads(out.read_text())["summary"]) == [winner]


def test_run_refuses_an_existing_out_before_training(tmp_path, capsys):
    out = tmp_path / "kept.json"
    out.write_text("{}")
    assert cli.main(["run", "--out", str(out), "--data-dir", str(tmp_path / "none")]) == 2
    assert "kept.json exists: pass --force to replace it" in capsys.readouterr().err
    assert out.read_text() == "{}"


def test_sweep_refuses_an_existing_out_unless_resumed_or_forced(tmp_path, capsys):
    out = tmp_path / "kept.json"
    out.write_text("{}")
    assert cli.main(["sweep", "--out", str(out), "--data-dir", str(tmp_path / "none")]) == 2
    assert "pass --force (or --resume to finish that sweep) to replace it" in capsys.readouterr().err
    # --force gets past the claim, to the next check (the missing data folder)
    assert cli.main(["sweep", "--out", str(out), "--force", "--data-dir", str(tmp_path / "none")]) == 2
    assert "none does not exist" in capsys.readouterr().err and out.read_text() == "{}"


@pytest.mark.slow
def test_run_without_out_writes_a_dated_report_and_no_save_writes_none(idx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["run", "--variant", "seed_bn", "--epochs", "1", "--data-dir", str(idx_dir), "--quiet",
              "--cpu-devices", "1"]
    assert cli.main(common) == 0
    written = list((tmp_path / "reports").glob("run-*.json"))
    assert len(written) == 1 and f"report written to {Path('reports') / written[0].name}" in capsys.readouterr().err
    assert cli.main([*common, "--no-save"]) == 0
    assert "report not saved (--no-save)" in capsys.readouterr().err
    assert list((tmp_path / "reports").iterdir()) == written  # and no lock left behind


@pytest.mark.slow
def test_a_run_in_which_everything_diverged_exits_6_with_a_line(idx_dir, tmp_path, capsys):
    out = tmp_path / "diverged.json"
    status = cli.main(["run", "--variant", "seed_plain", "--epochs", "1", "--learning-rate", "1e9", "--data-dir",
                       str(idx_dir), "--quiet", "--cpu-devices", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 6, err
    assert "bnbench: error: every run diverged" in err and "lower the learning rate" in err
    assert "diverged" in json.loads(out.read_text())["runs"][0]  # the report is kept all the same


def test_some_runs_diverging_is_a_warning_and_success():
    from bnbench.report.summary import divergence_news

    report = {"runs": [{"variant": "a", "seed": 0}, {"variant": "b", "seed": 0, "diverged": {"epoch": 1, "update": 3}}]}
    status, line = divergence_news(report)
    assert status == 0 and line.startswith("bnbench: warning: 1 of 2 runs diverged (b)")
    assert divergence_news({"runs": report["runs"][:1]}) == (0, None)


# `bnbench report`'s folder

@pytest.mark.slow  # draws the whole page several times
def test_report_never_replaces_a_file_it_did_not_write_unless_forced(tmp_path, capsys):
    source = write(tmp_path / "r.json", made_report())
    folder = tmp_path / "page"
    folder.mkdir()
    (folder / "README.md").write_text("someone's page")
    (folder / "notes.txt").write_text("mine")
    assert cli.main(["report", str(source), "--out", str(folder)]) == 2
    assert "holds README.md, which bnbench report did not write" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "notes.txt"]  # nothing half-written
    assert (folder / "README.md").read_text() == "someone's page"
    assert cli.main(["report", str(source), "--out", str(folder), "--force"]) == 0
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "README.md").read_text().startswith("# ")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [MANIFEST]  # no staging left


@pytest.mark.slow  # two whole pages with their plots
def test_report_into_its_own_folder_replaces_its_files_and_removes_its_old_plots(tmp_path):
    source = write(tmp_path / "r.json", made_report())
    folder = tmp_path / "page"
    assert cli.main(["report", str(source), "--out", str(folder)]) == 0
    own = set((folder / MANIFEST).read_text().split())
    assert "README.md" in own and own <= {p.name for p in folder.iterdir()}
    (folder / "old_plot.png").write_bytes(b"stale")  # as if the previous report had drawn it
    (folder / MANIFEST).write_text("".join(f"{n}\n" for n in sorted(own | {"old_plot.png"})))
    assert cli.main(["report", str(source), "--out", str(folder)]) == 0
    assert not (folder / "old_plot.png").exists()
    assert set((folder / MANIFEST).read_text().split()) == own


def test_reports_summarized_into_their_own_folder_are_not_foreign(tmp_path):
    source = write(tmp_path / "r.json", made_report())  # results/ holds its reports and their page
    assert cli.main(["report", str(source), "--out", str(tmp_path)]) == 0
    assert source.exists() and (tmp_path / "README.md").exists()


def test_a_report_folder_being_written_stops_a_second_writer(tmp_path):
    folder = ReportFolder(tmp_path / "page")
    with pytest.raises(PathTaken, match="is being written by bnbench pid"):
        ReportFolder(tmp_path / "page")
    assert folder.finish() == []
    folder.release()
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == [MANIFEST]


def test_plots_keep_titles_and_legends_whole_and_apart_from_tick_labels(tmp_path):
    """A long title on a narrow figure, and a legend under slanted long names: the saved PNG holds
    the whole title, and the legend lies below every tick label."""
    from bnbench.report import page

    plt = page._pyplot()
    fig, axes = page._panels(plt, 1)
    ax = axes[0]
    ax.bar(range(3), [1, 2, 3], label="[1] a processor with a very long name, 2 cores (cpu)")
    ax.set_xticks(range(3), ["a_rather_long_variant_name:depth=16,width=256"] * 3, rotation=60, ha="right")
    page._legend(ax)
    fig.suptitle("A title far wider than the figure it stands over, which a fixed canvas would cut at both ends")
    page._save(plt, fig, tmp_path / "p.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the figure is closed: measure it on a canvas of its own
    legend = ax.get_legend().get_window_extent(renderer)
    lowest_tick = min(t.get_window_extent(renderer).y0 for t in ax.get_xticklabels())
    assert legend.y1 <= lowest_tick
    title = fig._suptitle.get_window_extent(renderer)
    saved = fig.get_tightbbox(renderer)  # what bbox_inches="tight" keeps, in inches
    assert title.x0 >= saved.x0 * fig.dpi - 1 and title.x1 <= saved.x1 * fig.dpi + 1


def test_a_refused_default_claim_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    claim = claim_default("run")
    claim.release()  # nothing written: the reports/ folder it made goes too
    assert not (tmp_path / "reports").exists()


def test_a_loop_of_links_is_one_line(tmp_path):
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(BnbenchError, match="loop of links"):
        ReportClaim(loop)
