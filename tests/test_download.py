"""The release files, downloaded from a local HTTP server into the isolated cache, and the dataset
identity that the same checksums give an IDX folder. Nothing here reaches beyond 127.0.0.1."""

import gzip
import hashlib
import http.server
import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_idx_folder

from bnbench import cli
from bnbench.data import download
from bnbench.data import release as release_lib
from bnbench.data import sources as data
from bnbench.data.sources import DataError

FILES = [stem + ".gz" for stem in data.IDX_FILES.values()]


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 (port 0) serving ``server.files`` under ``server.url``; it counts
    requests, and ``server.cut[name] = (n, announce_all)`` sends only n bytes of a file, with a
    Content-Length for the whole file (a transfer that breaks off) or for the n bytes (a short file).
    Files named in ``server.unannounced`` are sent without a Content-Length (ended by closing), and
    ``server.stall[name] = s`` waits s seconds after what it sent before closing."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state = self.server
            path, _, query = self.path.partition("?")
            name = path.rsplit("/", 1)[-1]
            state.requests.append(name)
            if state.token is not None and query != state.token:  # a signed mirror: the token or nothing
                self.send_error(403)
                return
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            n, announce_all = state.cut.get(name, (len(body), True))
            self.send_response(200)
            if name not in state.unannounced:
                self.send_header("Content-Length", str(len(body) if announce_all else n))
            self.end_headers()
            try:
                self.wfile.write(body[:n])
                self.wfile.flush()
            except ConnectionError:  # the client stopped reading a file it had seen enough of
                pass
            time.sleep(state.stall.get(name, 0))
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests, httpd.cut, httpd.unannounced, httpd.stall = {}, [], {}, set(), {}
    httpd.token = None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/release/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def table_of(folder: Path) -> dict[str, tuple[int, str]]:
    """The release table entry that makes ``folder``'s files "the release"."""
    return {f: ((folder / f).stat().st_size, hashlib.sha256((folder / f).read_bytes()).hexdigest()) for f in FILES}


@pytest.fixture
def release(tmp_path_factory, monkeypatch, server):
    """Small synthetic IDX files as fashion_mnist's release (checksum table patched), served by ``server``."""
    folder = make_idx_folder(tmp_path_factory.mktemp("release"))
    monkeypatch.setitem(download.RELEASES, "fashion_mnist", table_of(folder))
    server.files.update({f: (folder / f).read_bytes() for f in FILES})
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", server.url)
    return folder


def cache_folder(name="fashion_mnist") -> Path:
    return download.download_dir(name)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith("."))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_download_is_verified_cached_and_loaded_once(release, server):
    first = data.load()
    assert (first.source, first.order, first.verified) == ("download", "canonical", True)
    assert sorted(server.requests) == sorted(FILES)
    kept = cache_folder()
    assert first.location == f"{server.url} -> {kept}"
    usual = 0o666 & ~current_umask()
    for f in FILES:
        assert (kept / f).read_bytes() == (release / f).read_bytes()
        assert stat.S_IMODE((kept / f).stat().st_mode) == usual  # not the temporary file's 0600
    reference = data.load(data_dir=release)
    np.testing.assert_array_equal(first.train_images, reference.train_images)
    np.testing.assert_array_equal(first.test_labels, reference.test_labels)
    protocol = first.describe()
    assert (protocol["source"], protocol["order"], protocol["verified"]) == ("download", "canonical", True)

    second = data.load()
    assert len(server.requests) == 4  # the second load downloaded nothing
    assert second.location == first.location and second.verified
    for npz in Path(os.environ["BNBENCH_CACHE_DIR"]).glob("*.npz"):
        npz.unlink()  # without the decoded cache the files are still not fetched again
    third = data.load()
    assert len(server.requests) == 4 and third.verified
    np.testing.assert_array_equal(third.train_images, first.train_images)


@pytest.mark.parametrize("how", ["closes-early", "closes-early-unannounced", "short-file", "stalls"])
def test_a_download_that_breaks_off_leaves_nothing_behind(release, server, monkeypatch, how):
    size = len(server.files[FILES[0]])
    server.cut[FILES[0]] = (size // 3, how != "short-file")
    if how == "closes-early-unannounced":
        server.unannounced.add(FILES[0])
    if how == "stalls":
        monkeypatch.setattr(download, "TIMEOUT_S", 0.5)
        server.stall[FILES[0]] = 3
    expected = {"short-file": f"it is {size // 3} bytes, the release file is {size}",
                "stalls": "broke off after [0-9]+ bytes \\(timed out\\)"}.get(
        how, f"broke off after {size // 3} of {size} bytes")
    with pytest.raises(DataError, match=expected) as info:
        data.load()
    message = str(info.value)
    assert "\n" not in message and server.url + FILES[0] in message and "--data-dir" in message
    kept = cache_folder()
    assert not (kept / FILES[0]).exists() and leftovers(kept) == []

    server.cut.clear()
    assert data.load().verified  # a later good download works


def test_a_file_that_fails_its_checksum_is_removed_and_never_used(release, server):
    good = server.files[FILES[1]]
    server.files[FILES[1]] = good[:-1] + bytes([good[-1] ^ 0xFF])  # same size, one byte off
    with pytest.raises(DataError, match=f"{server.url}{FILES[1]}: its sha256 is [0-9a-f]{{64}}, the release's") as info:
        data.load()
    assert "\n" not in str(info.value)
    kept = cache_folder()
    assert not (kept / FILES[1]).exists() and leftovers(kept) == []
    assert (kept / FILES[0]).is_file()  # files verified before it stay

    server.files[FILES[1]] = good
    requests = len(server.requests)
    assert data.load().verified
    assert server.requests[requests:] == [FILES[1], FILES[2], FILES[3]]  # only what was missing


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-content-length"])
def test_a_larger_file_is_refused_without_reading_it_all(release, server, announced):
    size = len(server.files[FILES[3]])
    server.files[FILES[3]] += b"\0" * 10_000_000
    if not announced:
        server.unannounced.add(FILES[3])
    expected = (f"it is {size + 10_000_000} bytes, the release file is {size};" if announced
                else f"it is larger than the release file \\({size} bytes\\)")
    with pytest.raises(DataError, match=f"{FILES[3]}: {expected}"):
        data.load()
    assert not (cache_folder() / FILES[3]).exists() and leftovers(cache_folder()) == []


def test_offline_is_one_line_naming_the_url_and_the_ways_out(closed_url):
    with pytest.raises(DataError) as info:
        data.load()
    message = str(info.value)
    assert f"{closed_url}train-images-idx3-ubyte.gz: cannot reach it" in message
    assert "Connection refused" in message and "\n" not in message
    for way_out in ("--data-dir", "--download-url", "BNBENCH_DOWNLOAD_URL"):
        assert way_out in message
    assert [p.name for p in cache_folder().iterdir()] == []


def test_without_a_mirror_the_official_locations_are_tried_in_order(release, server, monkeypatch, closed_url):
    """Keras' location first; when it fails, tfds' (here: a closed port, then the local server)."""
    monkeypatch.delenv("BNBENCH_DOWNLOAD_URL")
    monkeypatch.setitem(download.LOCATIONS, "fashion_mnist", (closed_url, server.url))
    ds = data.load()
    assert ds.verified and ds.location.startswith(server.url)
    assert sorted(server.requests) == sorted(FILES)


def test_with_a_mirror_only_the_mirror_is_tried(release, server, monkeypatch, closed_url):
    monkeypatch.setitem(download.LOCATIONS, "fashion_mnist", (server.url,))
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", closed_url)
    with pytest.raises(DataError, match="cannot reach it"):
        data.load()
    assert server.requests == []


def test_the_official_locations_are_keras_then_tfds():
    assert download.LOCATIONS["fashion_mnist"] == (
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    assert download.LOCATIONS["mnist"][0] == "https://storage.googleapis.com/cvdf-datasets/mnist/"


def test_download_url_argument_wins_over_the_environment(release, server, monkeypatch, closed_url):
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", closed_url)
    assert data.load(download_url=server.url.rstrip("/")).verified  # a missing final slash is added


def test_a_mirror_url_with_a_query_keeps_it_for_every_file(release, server):
    """A signed mirror (``...?token``): each file's URL is the folder's with the file name in its
    path and the query kept; joining the file name onto the whole URL would drop the query."""
    server.token = "token=abc"
    assert data.load(download_url=server.url.rstrip("/") + "?token=abc").verified
    assert sorted(server.requests) == sorted(FILES)
    assert download.file_url("https://m.org/fm?t=1#x", "a.gz") == "https://m.org/fm/a.gz?t=1"


def test_a_mirror_that_is_not_a_url_is_refused(monkeypatch):
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", "mirror.example.org/fashion")
    with pytest.raises(DataError, match="is not an http.*URL.*--data-dir"):
        data.load()


def test_data_dir_and_download_url_together_are_refused(idx_dir, server):
    with pytest.raises(DataError, match="either --data-dir .* or --download-url"):
        data.load(data_dir=idx_dir, download_url=server.url)


def test_a_cached_download_changed_later_is_removed_and_fetched_again(release, server):
    data.load()
    target = cache_folder() / FILES[2]
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))  # same size: only the checksum can tell
    with pytest.raises(DataError, match=f"{FILES[2]} in .* changed after it was downloaded"):
        data.load()
    assert not target.exists()
    assert data.load().verified
    assert server.requests.count(FILES[2]) == 2


def test_a_cache_that_cannot_be_written_is_one_line(release, server, monkeypatch):
    monkeypatch.setenv("BNBENCH_CACHE_DIR", "/proc/bnbench-cache")
    with pytest.raises(DataError, match="cannot create the download folder /proc/bnbench-cache/downloads/"
                                        "fashion_mnist .*BNBENCH_CACHE_DIR"):
        data.load()
    monkeypatch.delenv("BNBENCH_CACHE_DIR")
    monkeypatch.setenv("BNBENCH_CACHE_DIR", str(release.parent / "full-disk-cache"))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download.tempfile, "mkstemp", full_disk)
    with pytest.raises(DataError, match="cannot write .*train-images-idx3-ubyte.gz \\(No space left on device\\)"):
        data.load()
    assert server.requests == []


def test_partial_files_of_a_killed_download_are_cleared(release):
    kept = cache_folder()
    kept.mkdir(parents=True)
    stale, live = kept / f".{FILES[0]}.abc.part", kept / f".{FILES[0]}.def.part"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    old = time.time() - 2 * download.STALE_PART_S
    os.utime(stale, (old, old))
    data.load()
    assert not stale.exists() and live.exists()


def test_a_prepared_tfds_dataset_is_read_without_a_mirror_and_skipped_with_one(tmp_path, monkeypatch, release):
    prepared = tmp_path / "tfds"
    (prepared / "fashion_mnist" / "3.0.1").mkdir(parents=True)
    (prepared / "fashion_mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    monkeypatch.setenv("TFDS_DATA_DIR", str(prepared))
    assert data.load().source == "download"  # BNBENCH_DOWNLOAD_URL is set: the mirror is asked for
    monkeypatch.delenv("BNBENCH_DOWNLOAD_URL")
    arrays = data._read_idx_folder(release)  # stands in for what tfds would read
    monkeypatch.setattr(data, "_read_tfds", lambda name, folder: arrays)
    ds = data.load()
    assert (ds.source, ds.order, ds.verified, ds.location) == ("tfds", "tfds", False, str(prepared))


# --- through the command line ---------------------------------------------------------------------

@pytest.mark.slow
def test_cli_download_url_trains_on_the_download_and_reports_it(release, server, monkeypatch, closed_url, tmp_path,
                                                                capsys):
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", closed_url)  # the option, not the environment, is used
    out = tmp_path / "run.json"
    assert cli.main(["run", "--download-url", server.url, "--variant", "seed_plain", "--epochs", "1",
                     "--quiet", "--out", str(out)]) == 0
    protocol = json.loads(out.read_text())["protocol"]
    assert (protocol["source"], protocol["order"], protocol["verified"]) == ("download", "canonical", True)
    assert protocol["location"] == f"{server.url} -> {cache_folder()}"
    assert "downloading fashion_mnist" in capsys.readouterr().err  # the progress bar
    assert sorted(server.requests) == sorted(FILES)


def test_cli_offline_is_one_error_line_and_exit_2(closed_url, capsys):
    assert cli.main(["run", "--download-url", closed_url, "--epochs", "1", "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("bnbench: error: could not download") and closed_url in err[0]


# --- dataset identity ---------------------------------------------------------------------------------

@pytest.fixture
def two_releases(tmp_path, monkeypatch):
    """Synthetic stand-ins for both releases, different files, with the checksum table patched."""
    fashion = make_idx_folder(tmp_path / "fashion", train=5300, test=200)
    mnist = make_idx_folder(tmp_path / "mnist", train=5200, test=100)
    monkeypatch.setitem(download.RELEASES, "fashion_mnist", table_of(fashion))
    monkeypatch.setitem(download.RELEASES, "mnist", table_of(mnist))
    return fashion, mnist


def test_a_folder_of_the_other_release_is_refused(two_releases):
    fashion, mnist = two_releases
    with pytest.raises(DataError, match=f"{fashion} holds the Fashion-MNIST release, not mnist: "
                                        "pass --dataset fashion_mnist") as info:
        data.load("mnist", data_dir=fashion)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=f"{mnist} holds the MNIST release, not fashion_mnist: pass --dataset mnist"):
        data.load("fashion_mnist", data_dir=mnist)
    assert data.load("mnist", data_dir=mnist).verified and data.load("fashion_mnist", data_dir=fashion).verified


def test_one_file_of_the_other_release_is_refused_too(two_releases):
    fashion, mnist = two_releases
    (mnist / FILES[1]).write_bytes((fashion / FILES[1]).read_bytes())
    with pytest.raises(DataError, match="holds files of the Fashion-MNIST release, not mnist"):
        data.load("mnist", data_dir=mnist)


def test_files_of_no_known_release_load_unverified(two_releases, tmp_path):
    other = make_idx_folder(tmp_path / "own-copy", train=5100, test=50)
    ds = data.load("mnist", data_dir=other)
    assert ds.source == "idx" and ds.verified is False and ds.describe()["verified"] is False


def test_the_identity_is_kept_with_the_decoded_cache(two_releases, monkeypatch):
    fashion, _ = two_releases
    assert data.load(data_dir=fashion).verified
    monkeypatch.setattr(release_lib, "release_file", lambda path: pytest.fail("hashed again on a cache hit"))
    monkeypatch.setattr(data, "read_idx", lambda path: pytest.fail("the cache was not used"))
    assert data.load(data_dir=fashion).verified


def test_the_real_fashion_mnist_folder_as_mnist_is_one_line_exit_2(real_data_dir, capsys):
    assert cli.main(["run", "--dataset", "mnist", "--data-dir", str(real_data_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"bnbench: error: {real_data_dir} holds the Fashion-MNIST release, not mnist: pass --dataset "
                   "fashion_mnist, or a --data-dir with the MNIST files")


def test_the_real_fashion_mnist_folder_is_verified(real_data_dir):
    ds = data.load("fashion_mnist", data_dir=real_data_dir)
    assert ds.describe()["verified"] is True and ds.source == "idx"


def test_the_real_release_downloads_with_the_real_checksums(real_data_dir, server, monkeypatch):
    assert download.RELEASES["fashion_mnist"] == {
        f: (size, sha) for sha, f, size in
        ((line.split()[0], line.split()[1], (real_data_dir / line.split()[1]).stat().st_size)
         for line in (real_data_dir / "SHA256SUMS").read_text().splitlines())}
    server.files.update({f: (real_data_dir / f).read_bytes() for f in FILES})
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", server.url)
    ds = data.load()
    assert (ds.source, ds.verified) == ("download", True)
    assert len(ds.train_labels) == 55_000 and len(ds.val_labels) == 5_000 and len(ds.test_labels) == 10_000
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    for f in FILES:
        assert (cache_folder() / f).read_bytes() == (real_data_dir / f).read_bytes()


def gunzipped(folder: Path, into: Path) -> Path:
    """``folder``'s four files decompressed into ``into``, under the release's names without .gz."""
    into.mkdir()
    for name in FILES:
        (into / name.removesuffix(".gz")).write_bytes(gzip.decompress((folder / name).read_bytes()))
    return into


def content_table(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}


def test_un_gzipped_files_are_identified_by_their_content(two_releases, tmp_path, monkeypatch):
    fashion, _ = two_releases
    raw = gunzipped(fashion, tmp_path / "raw-fashion")
    monkeypatch.setitem(release_lib.CONTENTS, "fashion_mnist", content_table(raw))
    with pytest.raises(DataError, match=f"{raw} holds the Fashion-MNIST release, not mnist: pass --dataset "
                                        "fashion_mnist") as info:
        data.load("mnist", data_dir=raw)
    assert "\n" not in str(info.value)
    assert data.load("fashion_mnist", data_dir=raw).verified
    # One file changed by a byte: that file is no longer the release's, so the folder is unverified.
    images = raw / "t10k-labels-idx1-ubyte"
    images.write_bytes(images.read_bytes()[:-1] + bytes([(images.read_bytes()[-1] + 1) % 10]))
    assert not data.load("fashion_mnist", data_dir=raw).verified


@pytest.mark.slow
def test_the_content_table_is_the_release_decompressed(real_data_dir, tmp_path):
    """CONTENTS holds what the release files decompress to: the real Fashion-MNIST, un-gzipped,
    is refused as MNIST and verified as itself."""
    raw = gunzipped(real_data_dir, tmp_path / "raw")
    assert content_table(raw) == release_lib.CONTENTS["fashion_mnist"]
    with pytest.raises(DataError, match="holds the Fashion-MNIST release, not mnist"):
        data.load("mnist", data_dir=raw)


def test_a_release_compressed_again_is_identified_by_its_content(two_releases, tmp_path, monkeypatch):
    fashion, _ = two_releases
    monkeypatch.setitem(release_lib.CONTENTS, "fashion_mnist", content_table(gunzipped(fashion, tmp_path / "raw")))
    again = tmp_path / "again"
    again.mkdir()
    for name in FILES:  # another compression level: other bytes, the same content
        (again / name).write_bytes(gzip.compress(gzip.decompress((fashion / name).read_bytes()), compresslevel=1))
    assert (again / FILES[0]).read_bytes() != (fashion / FILES[0]).read_bytes()
    with pytest.raises(DataError, match="holds the Fashion-MNIST release, not mnist"):
        data.load("mnist", data_dir=again)
    assert data.load("fashion_mnist", data_dir=again).verified


@pytest.mark.slow
def test_a_signed_mirrors_token_stays_out_of_the_report(release, server, tmp_path):
    out = tmp_path / "r.json"
    server.token = "token=s3cret"
    url = server.url.rstrip("/") + "?token=s3cret"
    assert cli.main(["run", "--download-url", url, "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    text = out.read_text()
    report = json.loads(text)
    assert "s3cret" not in text and f"--download-url '{server.url.rstrip('/')}?...'" in report["command"]
    assert report["protocol"]["location"].startswith(server.url + " -> ")
