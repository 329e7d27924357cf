import gzip
import sys
import time

import numpy as np
import pytest
from data_helpers import make_idx_folder, write_idx

from bnbench.data import download
from bnbench.data import release as release_lib
from bnbench.data import sources as data
from bnbench.data.sources import DataError


def test_idx_folder_loads_in_canonical_order_with_the_notebook_split(idx_dir):
    ds = data.load(data_dir=idx_dir)
    with gzip.open(idx_dir / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    assert (ds.source, ds.order, ds.verified) == ("idx", "canonical", False)  # not a known release
    assert ds.val_images.shape == (5000, 28, 28) and ds.train_images.shape == (300, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.val_labels, labels[:5000])  # the first 5,000 are validation
    np.testing.assert_array_equal(ds.train_labels, labels[5000:])
    assert ds.test_images.shape == (200, 28, 28)


def test_second_load_comes_from_the_cache_and_is_identical(tmp_path, monkeypatch):
    folder = make_idx_folder(tmp_path / "idx")
    first = data.load(data_dir=folder)
    monkeypatch.setattr(data, "read_idx", lambda path: pytest.fail("the cache was not used"))
    start = time.perf_counter()
    second = data.load(data_dir=folder)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)


def test_cache_is_rebuilt_when_the_files_change(tmp_path):
    folder = make_idx_folder(tmp_path / "idx")
    first = data.load(data_dir=folder)
    images = np.zeros((5300, 28, 28), np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    assert data.load(data_dir=folder).train_images.max() == 0 != first.train_images.max()


def test_real_fashion_mnist_is_the_release(real_data_dir):
    ds = data.load(data_dir=real_data_dir)
    assert len(ds.train_labels) == 55_000 and len(ds.val_labels) == 5_000 and len(ds.test_labels) == 10_000
    full = np.concatenate([ds.val_images, ds.train_images])
    assert abs(full.mean() / 255 - 0.2860) < 1e-3  # the published mean pixel
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.verified and ds.describe()["verified"] is True  # the release's checksums


def test_describe_records_source_order_and_whether_the_release_was_verified(idx_dir):
    protocol = data.load(data_dir=idx_dir).describe()
    assert list(protocol) == ["dataset", "source", "order", "location", "verified", "train_examples",
                              "validation_examples", "test_examples", "image_shape"]
    assert protocol["image_shape"] == [28, 28]
    assert protocol["verified"] is False and protocol["location"] == str(idx_dir)
    assert set(data.ORDER_OF_SOURCE) == {"idx", "download", "tfds", "synthetic"}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_or_incomplete_idx_folder_gives_a_clear_error(tmp_path, damage):
    folder = make_idx_folder(tmp_path / "idx")
    target = folder / "train-images-idx3-ubyte.gz"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        expected = "damaged"
    elif damage == "garbage":
        target.write_bytes(gzip.compress(b"not an idx file at all"))
        expected = "not an IDX file"
    else:
        target.unlink()
        expected = "train-images-idx3-ubyte.gz missing"
    with pytest.raises(DataError, match=expected) as info:
        data.load(data_dir=folder)
    assert "\n" not in str(info.value)


def test_folder_without_a_dataset_says_what_it_expected(tmp_path):
    with pytest.raises(DataError, match="no fashion_mnist in .*IDX files.*tfds data dir"):
        data.load(data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        data.load(data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        data.load("svhn", data_dir=tmp_path)


def test_without_a_prepared_tfds_dataset_the_release_is_downloaded_without_tensorflow(idx_dir, monkeypatch):
    """Neither TensorFlow nor tfds can be imported; the mirror is a file:// URL of an IDX folder."""
    for module in ("tensorflow", "tensorflow_datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # `import tensorflow` now raises ImportError
    monkeypatch.setitem(download.RELEASES, "fashion_mnist", {
        path.name: (path.stat().st_size, release_lib.sha256(path)) for path in idx_dir.glob("*.gz")})
    monkeypatch.setenv("BNBENCH_DOWNLOAD_URL", idx_dir.as_uri())
    ds = data.load()
    assert (ds.source, ds.order, ds.verified) == ("download", "canonical", True)
    assert ds.location.startswith(idx_dir.as_uri() + "/ -> ")


def test_tfds_source_reads_through_tfds_data_source(tmp_path):
    """With tfds' mock data standing in for the prepared dataset (no download, no TensorFlow)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    (tmp_path / "fashion_mnist").mkdir()
    with tfds.testing.mock_data(num_examples=5100, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load(data_dir=tmp_path)
    assert (ds.source, ds.order) == ("tfds", "tfds")
    assert ds.train_images.shape == (100, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.val_labels.shape == (5000,) and ds.test_images.shape[1:] == (28, 28)
    assert 0 <= ds.train_labels.min() and ds.train_labels.max() < 10


@pytest.mark.slow
def test_real_tfds_prepared_dir_matches_the_idx_files(real_data_dir):
    tfds_dir = real_data_dir.parent / "tfds"
    if not (tfds_dir / "fashion_mnist").is_dir():
        pytest.skip("no prepared tfds copy beside the IDX files")
    via_tfds, via_idx = data.load(data_dir=tfds_dir), data.load(data_dir=real_data_dir)
    assert via_tfds.order == "tfds"
    # Same examples, another order: the multiset of test labels and the pixel sum agree.
    assert np.bincount(via_tfds.test_labels).tolist() == np.bincount(via_idx.test_labels).tolist()
    assert via_tfds.test_images.sum(dtype=np.int64) == via_idx.test_images.sum(dtype=np.int64)


# --- datasets from tensorflow-datasets, tested on tfds' own generated data ---------------------------

def mocked_tfds_dir(tmp_path, name):
    """A tfds data dir naming ``name``; tfds.testing.mock_data then serves generated examples of the
    real dataset's features (shapes, dtypes, label range) through tfds.data_source, as a prepared
    copy would: the only way to test these datasets without their files."""
    (tmp_path / name / "1.0.0").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("kmnist", (28, 28)), ("mnist", (28, 28))])
def test_tfds_datasets_load_with_their_own_shapes_and_channels(tmp_path, name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    folder = mocked_tfds_dir(tmp_path, name)
    with tfds.testing.mock_data(num_examples=60):
        ds = data.load(name, data_dir=folder, validation_size=20)
    assert (ds.name, ds.source, ds.order) == (name, "tfds", "tfds")
    assert ds.train_images.shape == (40, *shape) and ds.test_images.shape == (60, *shape)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 10
    assert ds.describe()["image_shape"] == list(shape)


@pytest.mark.slow
def test_models_train_on_color_images_flattened_or_by_channel(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from bnbench.engine import train
    from bnbench.models import variants

    with tfds.testing.mock_data(num_examples=80):
        ds = data.load("cifar10", data_dir=mocked_tfds_dir(tmp_path, "cifar10"), validation_size=16)
    device_data = train.DeviceData.from_dataset(ds)
    for name, layer, kernel in (("seed_bn", "Dense_0", (3072, 300)), ("conv_bn", "Conv_0", (3, 3, 3, 8))):
        result = train.train(variants.get(name).model, train.Protocol(epochs=1, batch_size=16), device_data, [0])
        assert result["state"].params[layer]["kernel"].shape[1:] == kernel  # after the seed axis
        assert np.isfinite(result["history"][0]["train_loss"]).all()


@pytest.mark.parametrize("name", ["kmnist", "cifar10"])
def test_a_dataset_that_is_not_prepared_says_how_to_get_it(name):
    with pytest.raises(DataError, match=f"{name} is not prepared in tfds' data dir .*tfds build {name}"):
        data.load(name)


def test_a_tfds_dir_without_the_dataset_says_what_it_expected(tmp_path):
    with pytest.raises(DataError, match="no cifar10 in .*a tfds data dir containing cifar10/"):
        data.load("cifar10", data_dir=tmp_path)


def test_only_the_release_datasets_download():
    with pytest.raises(DataError, match="bnbench downloads only fashion_mnist and mnist, not cifar10"):
        data.load("cifar10", download_url="http://127.0.0.1:1/")
