"""LeRobot's side of the compatibility checks; runs in the environment of requirements.txt.

    python ledataset_side.py write FRAMES.npz SPEC.json OUT_DIR
        writes a LeRobotDataset with LeRobot's own writer (create, add_frame per frame,
        save_episode per episode, finalize) from per-frame arrays and episode lengths
    python ledataset_side.py read OUT.npz DIR...
        loads each DIR with LeRobotDataset(repo_id, root=DIR) and saves what it yields:
        every item (iterated), the episode metadata, the tasks and the stats
"""

import json
import sys
from pathlib import Path

import numpy as np
from ledataset.datasets.lerobot_dataset import CODEBASE_VERSION, LeRobotDataset


def write(frames_path, spec_path, out_dir):
    frames = dict(np.load(frames_path))
    spec = json.loads(Path(spec_path).read_text())
    features = {name: {**f, "shape": tuple(f["shape"])} for name, f in spec["features"].items()}
    dataset = LeRobotDataset.create(
        spec["repo_id"], fps=spec["fps"], features=features, root=out_dir,
        robot_type=spec["robot_type"], use_videos=False,
    )
    row = 0
    for episode, length in enumerate(frames["episode_lengths"]):
        task = spec["tasks"][int(frames["episode_tasks"][episode])]
        for _ in range(int(length)):
            dataset.add_frame(
                {name: frames[name][row].reshape(features[name]["shape"]) for name in features}
                | {"task": task}
            )
            row += 1
        dataset.save_episode()
    dataset.finalize()


def read(out_path, *roots):
    saved = {"codebase_version": np.array(CODEBASE_VERSION)}
    for k, root in enumerate(roots):
        dataset = LeRobotDataset(f"local/dataset{k}", root=root)
        items = [dataset[i] for i in range(len(dataset))]
        prefix = f"{k}/"
        saved[prefix + "num_episodes"] = np.array(dataset.num_episodes)
        saved[prefix + "num_frames"] = np.array(dataset.num_frames)
        saved[prefix + "fps"] = np.array(dataset.fps)
        for key in items[0]:
            if key == "task":
                saved[prefix + "task"] = np.array([item["task"] for item in items])
            else:
                saved[prefix + key] = np.stack([item[key].numpy() for item in items])
        episodes = dataset.meta.episodes
        for key in ("episode_index", "length", "dataset_from_index", "dataset_to_index"):
            saved[prefix + "episodes/" + key] = np.array(episodes[key])
        saved[prefix + "episodes/tasks"] = np.array([t[0] for t in episodes["tasks"]])
        for feature, stats in dataset.meta.stats.items():
            for stat, value in stats.items():
                saved[prefix + f"stats/{feature}/{stat}"] = np.asarray(value)
    np.savez(out_path, **saved)


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](*sys.argv[2:])
