import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kt_cluster.core.config import AugmentConfig, DataConfig, SearchConfig
from kt_cluster.core.dataset import DatasetError, list_examples
from kt_cluster.worker.data import augment, order
from kt_cluster.worker.data.examples import DataError, Decoded, cache_plan, decode_with_pillow, listing, positive_fractions
from kt_cluster.worker.data.feed import TrainBatches, TrainingData, ValidationBatches
from kt_cluster.worker.data.pipeline import bad_file_in, datasets, decode, explain_data_errors, find_bad_file, resident
from kt_cluster.worker.data.synth import DEFAULT_CLASSES, generate

CLASSES = DEFAULT_CLASSES[:3]
SIZE = 32


def _config(root: Path, **data) -> SearchConfig:
    options = {"path": str(root), "image_size": SIZE, "classes": CLASSES, **data}
    return SearchConfig(batch_size=4, seed=1, data=DataConfig(**options))


@pytest.fixture
def root(tmp_path) -> Path:
    generate(tmp_path / "data", 14, 40, CLASSES, seed=0)  # 10 train, 4 val pages
    return tmp_path / "data"


def _first_val_image(root: Path) -> Path:
    return sorted((root / "val/images").iterdir())[0]


def _read_all(config: SearchConfig) -> None:
    """Iterate one full epoch of both sets inside explain_data_errors."""
    train, val, steps, _ = datasets(config)
    with explain_data_errors(config):
        list(train.take(steps))
        list(val)


def test_batches_have_the_documented_shapes_dtypes_and_values(root):
    train, val, _, _ = datasets(_config(root))
    for images, masks in [next(iter(train)), next(iter(val))]:
        assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == tf.float32
        assert masks.shape == (4, SIZE, SIZE, 3) and masks.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        assert float(tf.reduce_max(images)) > 0.5  # scaled to [0, 1], not left in 0..255 or 0..1/255
        assert set(np.unique(masks.numpy())) <= {0.0, 1.0}


def test_grayscale_config_gives_one_image_channel(root):
    images, _ = next(iter(datasets(_config(root, channels=1))[0]))
    assert images.shape == (4, SIZE, SIZE, 1)


def test_masks_follow_the_files_after_resizing(root):
    config = _config(root, image_size=40)  # the native size: nearest resizing is the identity
    _, val, _, _ = datasets(config)
    _, masks = next(iter(val))
    first = list_examples(root, "val", CLASSES)[0]
    expected = np.stack([np.asarray(Image.open(m)) > 0 for m in first.masks], axis=-1)
    assert np.array_equal(masks[0].numpy() > 0, expected)


def test_steps_default_to_one_pass_and_val_repeats_the_same_batches(root):
    train, val, steps, val_steps = datasets(_config(root))
    assert (steps, val_steps) == (math.ceil(10 / 4), math.ceil(4 / 4))
    assert len(list(train.take(steps * 3))) == steps * 3  # train repeats forever
    first, second = [[m.numpy() for _, m in val] for _ in range(2)]
    assert len(first) == val_steps
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_configured_steps_are_returned_and_val_yields_that_many_batches(root):
    _, val, steps, val_steps = datasets(_config(root, steps_per_epoch=7, validation_steps=3))
    assert (steps, val_steps) == (7, 3)
    assert len(list(val)) == 3


def test_train_order_is_seeded(root):
    def first_masks(seed):
        config = _config(root)
        config.seed = seed
        return [m.numpy() for _, m in datasets(config)[0].take(3)]

    reference = first_masks(5)
    assert all(np.array_equal(a, b) for a, b in zip(reference, first_masks(5)))
    assert not all(np.array_equal(a, b) for a, b in zip(reference, first_masks(6)))


def test_building_the_datasets_does_not_read_files(root):
    bad = _first_val_image(root)
    bad.write_bytes(b"garbage, not an image")
    train, val, _, _ = datasets(_config(root))  # must not raise
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(val)


def test_garbage_image_error_names_the_file(root):
    bad = _first_val_image(root)
    bad.write_bytes(b"\x00garbage bytes " * 20)
    with pytest.raises(DataError, match=str(bad)):
        _read_all(_config(root))


def test_truncated_image_error_names_the_file(root):
    bad = _first_val_image(root)
    bad.write_bytes(bad.read_bytes()[:100])  # a valid PNG header, then nothing
    with pytest.raises(DataError, match=str(bad)):
        _read_all(_config(root))


def test_mask_of_the_wrong_size_error_names_the_mask(root):
    bad = root / "train/masks/stamp/page00003.png"
    Image.new("L", (40, 36)).save(bad)
    with pytest.raises(DataError, match=f"{bad}: mask is 40x36 pixels but its image .* is 40x40"):
        _read_all(_config(root))


def test_mask_with_three_channels_error_names_the_mask(root):
    bad = root / "val/masks/signature/page00012.png"
    Image.new("RGB", (40, 40)).save(bad)
    with pytest.raises(DataError, match=f"{bad}: mask has 3 channels"):
        _read_all(_config(root))


@pytest.mark.parametrize("bad_file, content", [
    ("val/images/page00011.png", "garbage"),
    ("val/images/page00011.png", "wrong size"),  # reported as its masks not matching it
    ("val/masks/stamp/page00011.png", "garbage"),
    ("val/masks/stamp/page00011.png", "wrong size"),
    ("val/masks/stamp/page00011.png", "three channels"),
])
def test_graph_checks_put_the_path_in_the_tf_error_itself(root, bad_file, content):
    bad = root / bad_file
    if content == "garbage":
        bad.write_bytes(b"GIF89a, or anything else that is not PNG")
    else:
        Image.new("RGB" if content == "three channels" else "L", (40, 30)).save(bad)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(datasets(_config(root))[1])
    assert str(bad) in bad_file_in(info.value.message)


def test_find_bad_file_names_nothing_in_a_good_dataset(root):
    assert find_bad_file(_config(root)) is None


def test_errors_no_file_explains_pass_through_unchanged(root):
    error = tf.errors.InvalidArgumentError(None, None, "shapes of logits and labels differ")
    with pytest.raises(tf.errors.InvalidArgumentError, match="logits"):
        with explain_data_errors(_config(root)):
            raise error


def test_classes_differing_from_classes_txt_fail_before_reading(root):
    with pytest.raises(DatasetError, match="classes.txt"):
        datasets(_config(root, classes=["stamp", "table_number", "signature"]))


def test_positive_fractions_are_the_mean_object_area_per_class(root):
    config = _config(root, image_size=40)
    fractions = positive_fractions(config)
    masks = [[np.asarray(Image.open(m)) > 0 for m in e.masks] for e in list_examples(root, "train", CLASSES)]
    expected = np.clip(np.mean(masks, axis=(0, 2, 3)), 1e-4, 1 - 1e-4)
    assert np.allclose(fractions, expected)
    assert all(0 < f < 0.5 for f in fractions)


def test_positive_fractions_never_return_zero_for_an_absent_class(root):
    for mask in (root / "train/masks/signature").iterdir():
        Image.new("L", (40, 40)).save(mask)
    assert positive_fractions(_config(root))[CLASSES.index("signature")] == pytest.approx(1e-4)


def test_keras_fit_runs_many_epochs_without_running_out_of_data(root):
    import keras

    train, val, steps, val_steps = datasets(_config(root))
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(3, 1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(train, validation_data=val, epochs=5, steps_per_epoch=steps,
                            validation_steps=val_steps, verbose=0, shuffle=False)
    assert len(history.history["val_loss"]) == 5
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def _batches(dataset, count=None):
    return [(x.numpy(), y.numpy()) for x, y in (dataset.take(count) if count else dataset)]


def _decoded(config: SearchConfig) -> dict:
    examples = listing(config)
    return {split: resident(decode(config, getattr(examples, split), len(examples.classes))) for split in ("train", "val")}


def test_splits_that_fit_are_decoded_once_per_worker_and_serve_every_later_trial(root):
    data = TrainingData(_config(root))  # 10 + 4 pages of 32 px: well under cache_mb
    first = data.fit_inputs(seed=1)
    first_val = _batches(first.val)
    for path in (root / "train/images").iterdir():
        path.unlink()
    for path in (root / "val/images").iterdir():
        path.unlink()
    second = data.fit_inputs(seed=1, initial_epoch=2)  # a later trial: no file is read again
    assert [m.tolist() for _, m in _batches(second.val)] == [m.tolist() for _, m in first_val]
    assert len(_batches(second.train, 3 * second.steps)) == 3 * second.steps


def test_decoded_and_streamed_pipelines_yield_the_same_batches_in_the_same_order(root):
    config = _config(root)
    cached, cached_val, steps, _ = datasets(config, decoded=_decoded(config))
    streamed, streamed_val, _, _ = datasets(config)
    for (a, ma), (b, mb) in zip(_batches(cached, 3 * steps), _batches(streamed, 3 * steps)):  # 3 reshuffled passes
        assert np.array_equal(a, b) and np.array_equal(ma, mb)
    for (a, _), (b, _) in zip(_batches(cached_val), _batches(streamed_val)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_stream_started_at_a_later_batch_continues_the_same_stream(root, in_memory):
    config = _config(root)
    decoded = _decoded(config) if in_memory else None
    whole = _batches(datasets(config, decoded=decoded)[0], 9)
    resumed = _batches(datasets(config, start_batch=5, decoded=decoded)[0], 4)
    for (a, ma), (b, mb) in zip(whole[5:], resumed):
        assert np.array_equal(a, b) and np.array_equal(ma, mb)


def test_each_pass_visits_every_example_once_in_a_seeded_order():
    passes = [order.permutation(7, 10, p) for p in range(3)]
    assert all(sorted(p.tolist()) == list(range(10)) for p in passes)
    assert not np.array_equal(passes[0], passes[1])
    assert np.array_equal(order.permutation(7, 10, 1), passes[1])
    assert order.positions(7, 10, 8, 5).tolist() == [*passes[0][8:], *passes[1][:3]]


def test_augmentation_draws_are_a_function_of_the_stream_position():
    draws = [order.jitter(7, 10, p) for p in range(2)]
    assert draws[0].shape == (10, 3) and -1 <= draws[0].min() and draws[0].max() < 1
    assert not np.array_equal(draws[0], draws[1]) and np.array_equal(order.jitter(7, 10, 1), draws[1])
    assert np.array_equal(order.jitters(7, 10, 8, 5), np.concatenate([draws[0][8:], draws[1][:3]]))


def test_splits_larger_than_cache_mb_stream_from_disk(root):
    inputs = TrainingData(_config(root, cache_mb=0)).fit_inputs(seed=1)
    _batches(inputs.val)
    for path in (root / "val/images").iterdir():
        path.unlink()
    with pytest.raises(tf.errors.NotFoundError):
        _batches(inputs.val)


def test_validation_steps_below_one_pass_decode_only_what_is_read(root):
    generate(root.parent / "more", 24, 32, CLASSES, seed=2)  # 18 train, 6 val pages
    data = TrainingData(_config(root.parent / "more", validation_steps=1))
    first = _batches(data.fit_inputs(seed=1).val)
    for path in sorted((root.parent / "more/val/images").iterdir())[4:]:  # all but the 4 validation reads
        path.unlink()
    second = _batches(data.fit_inputs(seed=1).val)
    assert len(first) == len(second) == 1 and np.array_equal(first[0][0], second[0][0])


def test_without_tensorflow_batches_follow_the_same_order_from_arrays(root):
    config = _config(root)
    examples = listing(config)
    decoded = decode_with_pillow(examples.train, SIZE, 3)
    batches = TrainBatches(decoded, seed=1, batch=4, start=2)
    picks = order.positions(1, len(decoded), 2 * 4 + 4, 4)  # batch 1 of a stream started at batch 2
    images, masks = batches[1]
    assert batches.num_batches is None and np.array_equal(images, decoded.images[picks])
    assert np.array_equal(masks, decoded.masks[picks])
    val = ValidationBatches(decode_with_pillow(examples.val, SIZE, 3), batch=3, steps=3)  # 4 pages: 3 + 1, then wrap
    assert [len(val[i][0]) for i in range(3)] == [3, 1, 3] and np.array_equal(val[2][0], val[0][0])


def test_pillow_decoding_matches_the_tf_pipeline(root):
    config = _config(root, image_size=40)  # native size: masks must be identical
    examples = listing(config)
    pil = decode_with_pillow(examples.val, 40, 3)
    tf_decoded = decode(config, examples.val, len(CLASSES))
    assert np.array_equal(pil.masks, tf_decoded.masks)
    assert np.abs(pil.images - tf_decoded.images).max() < 1e-6
    shrunk = _config(root, image_size=SIZE)  # resized: both bilinear with antialiasing
    assert np.abs(decode_with_pillow(examples.val, SIZE, 3).images - decode(shrunk, examples.val, 3).images).mean() < 0.02


def test_a_bad_file_fails_pillow_decoding_naming_the_file(root):
    bad = _first_val_image(root)
    bad.write_bytes(b"\x00garbage bytes " * 20)
    with pytest.raises(DataError, match=str(bad)):
        decode_with_pillow(listing(_config(root)).val, SIZE, 3)


def test_cache_budget_takes_val_first_then_train_if_it_fits_too():
    config = _config(Path("unused"), image_size=64, cache_mb=1)  # 64*64*(3+3)*4 bytes: 10 examples fit in 1 MiB
    assert cache_plan(config, 4, 6, len(CLASSES)) == (True, True)
    assert cache_plan(config, 4, 7, len(CLASSES)) == (True, False)
    assert cache_plan(config, 11, 2, len(CLASSES)) == (False, True)
    config.data.cache_mb = 0
    assert cache_plan(config, 1, 1, len(CLASSES)) == (False, False)


# --- augmentation (data.augment) ------------------------------------------------------------------

AUGMENT = {"scale": 0.2, "shift": 0.1}


def test_a_whole_pixel_shift_moves_image_and_masks_together_and_repeats_the_edge():
    images = np.arange(2 * 33 * 33, dtype=np.float32).reshape(2, 33, 33, 1) / (2 * 33 * 33)
    masks = (images > 0.5).astype(np.float32)
    # shift 0.25 * draw 0.5 = 1/8 of the side, 4 of its 32 pixel steps: the window moves 4 down and 4 left
    draws = np.array([[0.0, 0.5, -0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    for apply in (augment.apply, lambda *a: [t.numpy() for t in augment.apply_tf(*map(tf.constant, a[:3]), a[3])]):
        shifted, shifted_masks = apply(images, masks, draws, AugmentConfig(shift=0.25))
        assert np.array_equal(shifted[0, :29, 4:], images[0, 4:, :29])
        assert np.array_equal(shifted[0, 29:, 4:], np.repeat(images[0, 32:, :29], 4, axis=0))  # the last row, again
        assert np.array_equal(shifted[0, :29, :4], np.repeat(images[0, 4:, :1], 4, axis=1))  # the first column
        assert np.array_equal(shifted_masks[0], (shifted[0] > 0.5).astype(np.float32))
        assert np.array_equal(shifted[1], images[1]) and np.array_equal(shifted_masks[1], masks[1])


def test_a_zoomed_window_keeps_masks_binary_and_images_in_range(root):
    config = _config(root, augment=AUGMENT)
    plain = _batches(datasets(_config(root))[0], 3)
    zoomed = _batches(datasets(config)[0], 3)
    for (x, m), (zx, zm) in zip(plain, zoomed):
        assert zx.shape == x.shape and zm.shape == m.shape and zx.dtype == x.dtype
        assert set(np.unique(zm)) <= {0.0, 1.0} and 0.0 <= zx.min() and zx.max() <= 1.0
        assert not np.array_equal(zx, x)  # each batch is seen through other windows
        assert abs(zm.mean() - m.mean()) < 0.05  # the same pages, a little closer or further


def test_augmentation_leaves_validation_alone(root):
    plain, augmented = datasets(_config(root))[1], datasets(_config(root, augment=AUGMENT))[1]
    for (x, m), (ax, am) in zip(_batches(plain), _batches(augmented)):
        assert np.array_equal(x, ax) and np.array_equal(m, am)


@pytest.mark.parametrize("in_memory", [True, False])
def test_an_augmented_stream_resumed_at_a_later_batch_sees_the_same_windows(root, in_memory):
    config = _config(root, augment=AUGMENT)
    decoded = _decoded(config) if in_memory else None
    whole = _batches(datasets(config, decoded=decoded)[0], 9)
    resumed = _batches(datasets(config, start_batch=5, decoded=decoded)[0], 4)
    for (a, ma), (b, mb) in zip(whole[5:], resumed):
        assert np.array_equal(a, b) and np.array_equal(ma, mb)


def test_decoded_streamed_and_tensorflow_free_augmented_batches_are_the_same(root):
    config = _config(root, augment=AUGMENT)
    decoded = _decoded(config)
    cached = _batches(datasets(config, decoded=decoded)[0], 6)
    streamed = _batches(datasets(config)[0], 6)
    arrays = Decoded(decoded["train"].images.numpy(), decoded["train"].masks.numpy())
    without_tf = TrainBatches(arrays, seed=1, batch=4, start=0, augmentation=config.data.augment)
    for i, ((a, ma), (b, mb)) in enumerate(zip(cached, streamed)):
        assert np.array_equal(a, b) and np.array_equal(ma, mb)
        c, mc = without_tf[i]
        assert np.abs(a - c).max() < 1e-6 and np.array_equal(ma, mc)
