"""``preprocess`` as a library call with no Ray running: it starts one and leaves none."""

from __future__ import annotations

import ray

from diffpol.contracts import Window
from diffpol.contracts.samples import load_samples
from diffpol.preprocess import PreprocessConfig, preprocess
from diffpol.preprocess.synthetic import write_synthetic_dataset


def test_a_call_without_ray_leaves_no_ray_behind(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, [12, 20, 7], episodes_per_file=2, seed=3)
    assert not ray.is_initialized()
    config = PreprocessConfig(window=Window(2, 4), val_fraction=0.3, progress=False)
    preprocess([data], tmp_path / "samples", config)
    assert not ray.is_initialized()
    assert load_samples(tmp_path / "samples").info.train.rows > 0
