"""The command line: argument errors exit with 2 before any work, and a small real run."""

import json

import onnx
import pytest
from onnx import TensorProto, helper

from diffpol.contracts import EnvShape, ModelMetadata, Window
from diffpol.evaluator.main import main


def tiny_onnx(path, env_id="Pendulum-v1", obs_dim=3, act_dim=1):
    """A valid ONNX graph carrying diffpol's metadata (its maths does not matter here)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["obs"], ["action"])],
        "tiny",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", 1, obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", 1, obs_dim])],
    )
    model = helper.make_model(graph)
    metadata = ModelMetadata(
        env=EnvShape(env_id, obs_dim, act_dim, (-1.0,) * act_dim, (1.0,) * act_dim),
        window=Window(),
        sampler="ddim",
        steps=1,
        step_noise_steps=0,
        model_version="tiny",
    )
    helper.set_model_props(model, metadata.to_props())
    onnx.save(model, path)
    return str(path)


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"--env": "Pendulum-v9"},
            "unknown env id 'Pendulum-v9'; known: MountainCarContinuous-v0, Pendulum-v1",
        ),
        ({"--seeds": "5:3"}, "seed range 5:3 is empty"),
        ({"--seeds": "a:b"}, "seed range 'a:b' is not START:STOP"),
        ({"--policy": "/no/such/model.onnx"}, "model file '/no/such/model.onnx' does not exist"),
        ({"--policy": "best-policy"}, "unknown policy 'best-policy'"),
        ({"--policy": "grpc://host:99999"}, "grpc://HOST:PORT"),
        ({"--noise-seed": "-1"}, "noise seed"),
        ({"--workers": "-2"}, "workers"),
        ({"--backend": "bullet"}, "backend"),
        ({"--chunk-size": "0"}, "chunk_size"),
    ],
)
def test_invalid_arguments_exit_2_with_a_clear_message(capsys, tmp_path, override, message):
    args = {
        "--policy": "zero",
        "--env": "Pendulum-v1",
        "--seeds": "0:4",
        "--out": str(tmp_path / "o"),
    }
    args.update(override)
    code, err = run_cli(
        capsys, *[x for pair in args.items() for x in pair], "--workers", args.get("--workers", "0")
    )
    assert code == 2
    assert message in err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_model_that_does_not_fit_the_env_exits_2(capsys, tmp_path):
    pendulum_model = tiny_onnx(tmp_path / "pendulum.onnx")
    code, err = run_cli(
        capsys,
        "--policy",
        pendulum_model,
        "--env",
        "MountainCarContinuous-v0",
        "--seeds",
        "0:2",
        "--out",
        str(tmp_path / "o"),
        "--workers",
        "0",
    )
    assert code == 2
    assert "exported for env 'Pendulum-v1'" in err and "obs_dim is 3, the env's is 2" in err
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    code, err = run_cli(
        capsys,
        "--policy",
        str(not_onnx),
        "--env",
        "Pendulum-v1",
        "--seeds",
        "0:2",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "not a readable ONNX model" in err


def test_missing_required_argument_exits_2(capsys):
    code, err = run_cli(capsys, "--env", "Pendulum-v1")
    assert code == 2 and "--policy" in err


def test_a_small_run_writes_everything(capsys, tmp_path):
    out = tmp_path / "eval"
    code = main(
        [
            "--policy",
            "zero",
            "--policy",
            "rnd=random",
            "--env",
            "Pendulum-v1",
            "--seeds",
            "0:4",
            "--out",
            str(out),
            "--workers",
            "0",
            "--chunk-size",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "| zero |" in captured.out and "| rnd |" in captured.out
    assert "2/2" in captured.err  # tqdm: chunks done per policy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_order"] == ["zero", "rnd"]
    assert summary["policies"]["rnd"]["source"] == {"kind": "builtin", "target": "random"}
    assert summary["env_backend"] == "numpy"  # the envs default for Pendulum-v1
    assert summary["chunk_size"] == 2
    assert {p.name for p in out.iterdir()} == {
        "comparison.md",
        "episodes.parquet",
        "report.pb",
        "returns.png",
        "summary.json",
        "trajectories-zero.png",
        "trajectories-rnd.png",
    }


def test_an_onnx_model_for_another_obs_dim_is_refused_before_any_worker_starts(capsys, tmp_path):
    import ray

    # Exported for one Meta-World task (39-D), evaluated on MT10 (49-D with the one-hot).
    model = tiny_onnx(tmp_path / "reach.onnx", env_id="metaworld/reach-v3", obs_dim=39, act_dim=4)
    code, err = run_cli(
        capsys,
        "--policy",
        model,
        "--env",
        "metaworld/MT10",
        "--seeds",
        "0:10",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2
    assert (
        "exported for env 'metaworld/reach-v3'" in err and "obs_dim is 39, the env's is 49" in err
    )
    assert not ray.is_initialized() and not (tmp_path / "o").exists()
