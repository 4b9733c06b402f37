"""Real policy sources through Ray: rollout's built-ins, ONNX files, the gRPC sampler."""

import gymnasium as gym
import numpy as np
import pytest

from diffpol.evaluator import evaluate
from diffpol.evaluator.errors import EvaluationConfigError
from diffpol.sampler.testing import export_reference_ddpm


@pytest.fixture(scope="module", autouse=True)
def dp_cache(tmp_path_factory):
    """Keep the DP expert's solved table under /tmp; set before Ray starts so actors see it."""
    import os

    cache = tmp_path_factory.mktemp("dp-cache")
    old = os.environ.get("DIFFPOL_CACHE_DIR")
    os.environ["DIFFPOL_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("DIFFPOL_CACHE_DIR")
    else:
        os.environ["DIFFPOL_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def ddpm_onnx(tmp_path_factory):
    """A stochastic sampler (DDPM: fresh noise at each denoising step) with action chunks."""
    path = tmp_path_factory.mktemp("onnx") / "ddpm.onnx"
    return str(
        export_reference_ddpm(
            path,
            obs_dim=3,  # Pendulum-v1
            act_dim=1,
            n_obs_steps=2,
            horizon=8,
            n_action_steps=4,
            activation="mish_fast",
        )
    )


def test_builtin_policies_in_ray_workers(ray_local):
    result = evaluate(["zero", "random", "expert"], "Pendulum-v1", "0:6", workers=2, chunk_size=3)
    assert [p.ran_in for p in result.policies] == ["ray"] * 3
    # zero torque, against an independent gymnasium loop
    for i, seed in enumerate(range(6)):
        env = gym.make("Pendulum-v1")
        env.reset(seed=seed)
        total = 0.0
        for _ in range(200):
            total += float(np.float32(env.step(np.zeros(1, np.float32))[1]))
        assert result["zero"].returns[i] == total
    assert result["expert"].summary.mean > -400 > result["random"].summary.mean
    assert result["expert"].summary.success_rate > 0.5
    assert result["zero"].summary.success_rate == 0.0


def test_onnx_for_another_env_is_rejected(ddpm_onnx):
    with pytest.raises(EvaluationConfigError, match="exported for env 'Pendulum-v1'"):
        evaluate([ddpm_onnx], "MountainCarContinuous-v0", "0:2", workers=0)


def test_onnx_in_ray_in_process_and_through_grpc_agree_exactly(ray_local, ddpm_onnx):
    from diffpol.evaluator import comparison_of
    from diffpol.sampler import OnnxPolicy, SamplerServer

    kwargs = dict(env_id="Pendulum-v1", seeds="0:10", chunk_size=4, noise_seed=3)
    with SamplerServer(ddpm_onnx) as server:  # port 0: a free port
        in_ray = evaluate(
            {"onnx": ddpm_onnx, "grpc": f"grpc://{server.address}"}, workers=2, **kwargs
        )
    in_process = evaluate({"onnx": OnnxPolicy(ddpm_onnx)}, workers=0, **kwargs)
    assert [p.ran_in for p in in_ray.policies] == ["ray", "ray"]
    assert in_process["onnx"].ran_in == "driver"
    assert in_ray["grpc"].source == {"kind": "grpc", "target": server.address}
    np.testing.assert_array_equal(in_ray["onnx"].returns, in_process["onnx"].returns)
    np.testing.assert_array_equal(in_ray["grpc"].returns, in_process["onnx"].returns)
    assert in_ray["onnx"].policy_calls == in_ray["grpc"].policy_calls == 3 * 50  # Ta = 4
    assert in_ray["onnx"].replay_matches and in_ray["grpc"].replay_matches
    difference = comparison_of(in_ray).row("grpc").difference
    assert (difference.mean, difference.p_value) == (0.0, 1.0)
    # The noise seed reaches the sampler: another one gives other episodes.
    other = evaluate({"onnx": ddpm_onnx}, workers=0, **{**kwargs, "noise_seed": 9})
    assert not np.array_equal(other["onnx"].returns, in_process["onnx"].returns)


def test_unreachable_sampler_is_a_clear_error():
    with pytest.raises(
        EvaluationConfigError, match=r"'grpc://127\.0\.0\.1:9' could not be queried.*UNAVAILABLE"
    ):
        evaluate(["grpc://127.0.0.1:9"], "Pendulum-v1", "0:2", workers=0)
