"""The whole pipeline on small synthetic datasets, with a real local Ray."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffpol.contracts import Window
from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.dataset import data_files
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import Normalizer
from diffpol.contracts.samples import load_samples, sample_arrays, sample_datasets, unflatten
from diffpol.preprocess import PreprocessConfig, pipeline, preprocess
from diffpol.preprocess.synthetic import synthetic_episodes, write_dataset, write_synthetic_dataset
from diffpol.preprocess.windows import label_values

LENGTHS = [30, 1, 17, 40, 25, 9, 33, 12, 20, 3]
CONFIG = PreprocessConfig(
    window=Window(3, 5), val_fraction=0.3, seed=7, shuffle_group_rows=60, progress=False
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "mixed"
    # Some episodes labelled by an expert, some only by the executed action.
    flags = [i % 3 != 0 for i in range(len(LENGTHS))]
    write_synthetic_dataset(root, LENGTHS, episodes_per_file=3, expert_label=flags, seed=1)
    return root


@pytest.fixture(scope="module")
def result(ray_local, dataset, tmp_path_factory):
    return preprocess([dataset], tmp_path_factory.mktemp("out") / "samples", CONFIG)


def raw_table(*roots: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for root in roots for p in data_files(root))


def read_split(out_dir: Path, split: str) -> pa.Table:
    info = json.loads((out_dir / "samples.json").read_text())
    return pa.concat_tables(pq.read_table(out_dir / f) for f in info[split]["files"])


def reference_windows(raw: pa.Table, n_obs_steps: int, horizon: int) -> dict:
    """A plain per-row loop over the spec (``samples.py``), independent of windows.py."""
    episodes = defaultdict(dict)
    for r in raw.to_pylist():
        label = r["expert_action"] if r["expert_action"] is not None else r["action"]
        episodes[r["episode_id"]][r["step"]] = (r["obs"], label)
    out = {}
    for episode, steps in episodes.items():
        last = len(steps) - 1
        for t in range(len(steps)):
            obs = [steps[max(s, 0)][0] for s in range(t - n_obs_steps + 1, t + 1)]
            act = [steps[min(s, last)][1] for s in range(t, t + horizon)]
            out[(episode, t)] = (np.concatenate(obs), np.concatenate(act))
    return out


def assert_samples_match_reference(out_dir: Path, raw: pa.Table, config: PreprocessConfig):
    samples = load_samples(out_dir)
    expected = reference_windows(raw, config.window.n_obs_steps, config.window.horizon)
    seen = {}
    for split in ("train", "val"):
        table = read_split(out_dir, split)
        obs, action = unflatten(table.to_pydict(), samples.info)
        obs = samples.normalizer.obs.unnormalize(obs).reshape(len(table), samples.info.obs_width)
        action = samples.normalizer.action.unnormalize(action).reshape(
            len(table), samples.info.action_width
        )
        for i, key in enumerate(
            zip(table["episode_id"].to_pylist(), table["step"].to_pylist(), strict=True)
        ):
            assert key not in seen, f"sample {key} written twice"
            seen[key] = split
            np.testing.assert_allclose(obs[i], expected[key][0], atol=2e-5, rtol=1e-5)
            np.testing.assert_allclose(action[i], expected[key][1], atol=2e-5, rtol=1e-5)
    assert seen.keys() == expected.keys()
    return seen


def test_samples_follow_the_window_and_padding_spec(result, dataset):
    seen = assert_samples_match_reference(result.out_dir, raw_table(dataset), CONFIG)
    # No episode on both sides of the split.
    split_of_episode = defaultdict(set)
    for (episode, _), split in seen.items():
        split_of_episode[episode].add(split)
    assert all(len(s) == 1 for s in split_of_episode.values())


def test_samples_json_counts_match_the_files(result, dataset):
    info = json.loads((result.out_dir / "samples.json").read_text())
    assert info["version"] == 2
    assert (info["env_id"], info["obs_dim"], info["act_dim"]) == ("Pendulum-v1", 3, 1)
    assert (info["n_obs_steps"], info["horizon"], info["n_action_steps"]) == (3, 5, 1)
    assert info["config"]["window"] == {"n_obs_steps": 3, "horizon": 5, "n_action_steps": 1}
    assert (info["action_low"], info["action_high"]) == ([-2.0], [2.0])
    assert info["val"]["episodes"] == 3 and info["train"]["episodes"] == 7  # 30% of 10
    for split in ("train", "val"):
        table = read_split(result.out_dir, split)
        assert info[split]["rows"] == table.num_rows
        assert info[split]["episodes"] == len(set(table["episode_id"].to_pylist()))
    assert info["train"]["rows"] + info["val"]["rows"] == sum(LENGTHS)
    expert_rows = sum(n for i, n in enumerate(LENGTHS) if i % 3 != 0)
    assert info["label"] == "expert_action, else action"
    assert info["label_rows"] == {
        "expert_action": expert_rows,
        "action": sum(LENGTHS) - expert_rows,
    }
    assert info["normalizer"] == {"obs": "standard", "action": "minmax"}
    (source,) = info["sources"]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert source["fingerprint"] == manifest["fingerprint"]
    assert result.info == load_samples(result.out_dir).info


@pytest.mark.parametrize(
    ("obs_norm", "action_norm"), [("standard", "minmax"), ("minmax", "standard")]
)
def test_normalizer_equals_numpy_over_all_data(ray_local, dataset, tmp_path, obs_norm, action_norm):
    config = PreprocessConfig(
        window=Window(2, 2),
        val_fraction=0.2,
        obs_norm=obs_norm,
        action_norm=action_norm,
        progress=False,
    )
    if (obs_norm, action_norm) == (CONFIG.obs_norm, CONFIG.action_norm):
        config = CONFIG  # reuse the module's run where the modes are the same
    out = tmp_path / "out"
    normalizer = preprocess([dataset], out, config).normalizer
    raw = raw_table(dataset)
    obs = fixed_list_values(raw.column("obs"), 3).astype(np.float64)
    labels = label_values(raw, 1)[0].astype(np.float64)

    def expected(mode: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if mode == "minmax":
            return (x.max(0) + x.min(0)) / 2, (x.max(0) - x.min(0)) / 2
        return x.mean(0), x.std(0)

    for part, x, mode in (
        (normalizer.obs, obs, obs_norm),
        (normalizer.action, labels, action_norm),
    ):
        center, scale = expected(mode, x)
        assert part.mode == mode
        np.testing.assert_allclose(part.center, center, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(part.scale, scale, rtol=1e-9)
        np.testing.assert_allclose(part.unnormalize(part.normalize(x)), x, rtol=1e-5, atol=1e-5)
    if action_norm == "minmax":
        normed = normalizer.action.normalize(labels)
        assert normed.min() == pytest.approx(-1, abs=1e-6) and normed.max() == pytest.approx(
            1, abs=1e-6
        )
    assert Normalizer.load(out / "normalizer.json") == normalizer


def test_several_datasets_are_combined(ray_local, tmp_path):
    write_synthetic_dataset(tmp_path / "a", [8, 12, 5], seed=1)
    write_synthetic_dataset(
        tmp_path / "b", [7, 9], first_episode_id=1000, seed=2, expert_label=False
    )
    config = PreprocessConfig(window=Window(2, 3), val_fraction=0.2, progress=False)
    result = preprocess([tmp_path / "a", tmp_path / "b"], tmp_path / "out", config)
    assert result.info.train.rows + result.info.val.rows == 41
    assert result.info.train.episodes + result.info.val.episodes == 5
    assert [s["path"] for s in result.info.sources] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert_samples_match_reference(
        tmp_path / "out", raw_table(tmp_path / "a", tmp_path / "b"), config
    )


def test_an_episode_spread_over_two_files_is_windowed_correctly(ray_local, tmp_path):
    table = synthetic_episodes([10, 6, 11])
    # Episode 1 (rows 10..15) starts in the first part file and ends in the second.
    write_dataset(tmp_path / "d", [table.slice(0, 13), table.slice(13)])
    config = PreprocessConfig(window=Window(4, 8), val_fraction=0.0, progress=False)
    preprocess([tmp_path / "d"], tmp_path / "out", config)
    assert_samples_match_reference(tmp_path / "out", table, config)


def test_episode_ids_shared_between_datasets_are_rejected(ray_local, tmp_path):
    write_synthetic_dataset(tmp_path / "a", [4, 4], seed=1)
    write_synthetic_dataset(tmp_path / "b", [5, 5], seed=2)  # same ids 0 and 1
    with pytest.raises(ContractError, match="episode id 0 occurs in both"):
        preprocess([tmp_path / "a", tmp_path / "b"], tmp_path / "out", CONFIG)
    assert not (tmp_path / "out").exists()


def test_nan_in_the_data_is_a_clear_error_naming_the_dataset(ray_local, tmp_path):
    table = synthetic_episodes([5, 5])
    reward = table.column("reward").to_numpy().copy()
    reward[3] = np.nan
    table = table.set_column(table.schema.get_field_index("reward"), "reward", pa.array(reward))
    write_dataset(tmp_path / "d", [table])
    with pytest.raises(
        ContractError, match=rf"stats: {tmp_path / 'd'}: column 'reward' has 1 non-finite"
    ):
        preprocess([tmp_path / "d"], tmp_path / "out", CONFIG)
    assert not (tmp_path / "out").exists()


def test_a_corrupted_page_behind_an_intact_footer_is_named(ray_local, tmp_path):
    write_synthetic_dataset(tmp_path / "d", [20] * 6, episodes_per_file=3)
    part = data_files(tmp_path / "d")[1]
    data = bytearray(part.read_bytes())
    data[200:1200] = bytes(b ^ 0xFF for b in data[200:1200])  # pages, not the footer
    part.write_bytes(bytes(data))
    config = PreprocessConfig(val_fraction=0.2, verify_fingerprints=False, progress=False)
    with pytest.raises(ContractError, match=rf"stats: {part} cannot be read \(corrupted\?\)"):
        preprocess([tmp_path / "d"], tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_a_failure_mid_pipeline_leaves_no_complete_looking_output(
    ray_local, dataset, tmp_path, monkeypatch
):
    real_write_split = pipeline.write_split

    def fail_on_val(sources, plan, *args, **kwargs):
        if plan.name == "val":
            raise RuntimeError("disk full")
        return real_write_split(sources, plan, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_split", fail_on_val)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        preprocess([dataset], out, CONFIG)
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a staging directory
    # Replacing an existing output: the old one survives a failed run untouched.
    out.mkdir()
    (out / "samples.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        preprocess([dataset], out, CONFIG, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "samples.json").read_text() == "old"


def test_existing_output_is_not_replaced_without_overwrite(ray_local, dataset, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        preprocess([dataset], tmp_path / "out", CONFIG)


def test_same_seed_gives_the_same_samples(result, dataset, tmp_path):
    again = preprocess([dataset], tmp_path / "again", CONFIG)
    for split in ("train", "val"):
        a, b = read_split(result.out_dir, split), read_split(again.out_dir, split)
        assert a.sort_by([("episode_id", "ascending"), ("step", "ascending")]).equals(
            b.sort_by([("episode_id", "ascending"), ("step", "ascending")])
        )
    assert again.normalizer == result.normalizer


def test_rows_are_shuffled_across_episodes(result):
    table = read_split(result.out_dir, "train")
    episodes = table["episode_id"].to_numpy()
    steps = table["step"].to_numpy()
    # Unshuffled output would hold long runs of one episode in step order.
    assert (episodes[1:] != episodes[:-1]).mean() > 0.5
    assert (np.diff(steps) == 1).mean() < 0.2


def test_sample_datasets_reads_both_splits_with_ray(result):
    train, val = sample_datasets(result.out_dir)
    assert train.count() == result.info.train.rows
    assert val.count() == result.info.val.rows
    batch = train.take_batch(8, batch_format="numpy")
    obs, action = unflatten(batch, result.info)
    assert obs.shape == (8, 3, 3) and action.shape == (8, 5, 1)
    assert obs.dtype == action.dtype == np.float32
    # The Arrow reader gives the same rows, flat.
    arrays = sample_arrays(train.take_batch(8, batch_format="pyarrow"))
    np.testing.assert_array_equal(arrays["obs"], obs.reshape(8, 9))
    np.testing.assert_array_equal(arrays["action"], action.reshape(8, 5))
    assert arrays["obs"].dtype == arrays["action"].dtype == np.float32


def test_no_validation_split_gives_an_empty_readable_val(ray_local, dataset, tmp_path):
    config = PreprocessConfig(window=Window(2, 4), val_fraction=0.0, progress=False)
    result = preprocess([dataset], tmp_path / "out", config)
    assert (result.info.val.rows, result.info.val.episodes) == (0, 0)
    assert result.info.train.rows == sum(LENGTHS)
    _, val = sample_datasets(tmp_path / "out")
    assert val.count() == 0


def test_cli_writes_the_same_artifact(ray_local, dataset, tmp_path, capsys):
    from diffpol.preprocess.main import main

    code = main(
        [
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "out"),
            "--n-obs-steps",
            "2",
            "--horizon",
            "4",
            "--val-fraction",
            "0.2",
            "--obs-norm",
            "minmax",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    samples = load_samples(tmp_path / "out")
    assert (samples.info.window.n_obs_steps, samples.info.window.horizon) == (2, 4)
    assert samples.info.normalizer == {"obs": "minmax", "action": "minmax"}
    assert samples.info.train.episodes + samples.info.val.episodes == len(LENGTHS)
    assert ray_local.is_initialized()  # the CLI left the caller's Ray alone


def test_cli_reports_bad_data_found_by_ray_with_exit_2(ray_local, tmp_path, capsys):
    from diffpol.preprocess.main import main

    write_synthetic_dataset(tmp_path / "a", [4, 4], seed=1)
    write_synthetic_dataset(tmp_path / "b", [4, 4], seed=2)  # same episode ids as a
    code = main(
        [
            "--data",
            str(tmp_path / "a"),
            "--data",
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "episode id 0 occurs in both" in capsys.readouterr().err


@pytest.fixture
def output_copy(result, tmp_path):
    import shutil

    return Path(shutil.copytree(result.out_dir, tmp_path / "copy"))


def edit_json(path: Path, **changes) -> None:
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        target = raw
        *parents, leaf = key.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    path.write_text(json.dumps(raw))


def test_load_samples_reads_version_1_outputs_as_one_executed_action(output_copy):
    path = output_copy / "samples.json"
    raw = json.loads(path.read_text())
    del raw["n_action_steps"]
    path.write_text(json.dumps(raw | {"version": 1}))
    info = load_samples(output_copy).info
    assert info.version == 2 and info.window.n_action_steps == 1
    assert (info.window.n_obs_steps, info.window.horizon) == (3, 5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 3}, "samples.json has version 3"),
        ({"train__rows": 1}, "train: files hold .* rows, samples.json says 1"),
        ({"obs_dim": 4}, "normalizer dims"),
        ({"horizon": 6}, "has schema"),
        ({"normalizer": {"obs": "minmax", "action": "minmax"}}, "normalizer modes"),
        ({"val__files": ["val/missing.parquet"]}, "missing.parquet .* is unreadable"),
    ],
)
def test_load_samples_rejects_inconsistent_outputs(output_copy, changes, message):
    edit_json(output_copy / "samples.json", **changes)
    with pytest.raises(ContractError, match=message):
        load_samples(output_copy)


def test_load_samples_needs_samples_json(output_copy):
    (output_copy / "samples.json").unlink()
    with pytest.raises(ContractError, match="not a complete preprocess output"):
        load_samples(output_copy)
