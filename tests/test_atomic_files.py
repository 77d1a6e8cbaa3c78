"""Atomic file writes: whole files or nothing, for the chief's state and results and the workers'
checkpoints."""

import os

import keras
import pytest

from kt_cluster.core.atomic_files import atomic_output, atomic_write, temporary_name


@pytest.mark.parametrize("new_folder", [False, True])
def test_atomic_write_makes_missing_folders_and_replaces_whole_files(tmp_path, new_folder):
    path = tmp_path / "project" / "trial_07" / "trial.json"
    atomic_write(path, '{"a":1}', fsync=False, new_folder=new_folder)
    atomic_write(str(path), b'{"a":2}', new_folder=new_folder)  # exists now: replaced
    assert path.read_text() == '{"a":2}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["trial.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "best_model.keras"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError, match="model broke"):
        with atomic_output(path) as tmp:
            with open(tmp, "w") as handle:
                handle.write("half a mod")
            raise RuntimeError("model broke")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["best_model.keras"]


def test_temporary_names_keep_the_suffixes_keras_chooses_formats_by(tmp_path):
    for name in ("resume.weights.h5", "best_model.keras", "trial.json"):
        tmp = temporary_name(str(tmp_path / name))
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".")
        assert tmp.endswith(name.partition(".")[1] + name.partition(".")[2]) and tmp != str(tmp_path / name)


def test_keras_writes_weights_through_atomic_output(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "resume.weights.h5"
    with atomic_output(path) as tmp:
        model.save_weights(tmp)
    again = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    again.load_weights(path)
    assert all((a == b).all() for a, b in zip(model.get_weights(), again.get_weights()))
    assert os.listdir(tmp_path) == ["resume.weights.h5"]
