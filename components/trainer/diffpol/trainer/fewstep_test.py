"""Flow-matching and consistency policies: objectives, loops, and the bimodal case."""

from __future__ import annotations

import pytest
import torch

from diffpol.contracts import Window
from diffpol.contracts.normalizer import AffineNormalizer, Normalizer
from diffpol.diffusion import ConsistencyDistillation, FlowScheduler, NoiseScheduleConfig
from diffpol.diffusion.flow import TIME_SCALE, sample_times
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.fewstep import ConsistencyPolicyModel, FlowPolicyModel
from diffpol.trainer.modeling import EMA, build_policy_model
from diffpol.trainer.synthetic import bimodal_samples

NORMALIZER = Normalizer(
    AffineNormalizer("standard", (0.0, 0.5, 0.0), (1.0, 1.0, 4.0)),
    AffineNormalizer("minmax", (0.0,), (2.0,)),
)


def small(objective: str, **kw) -> ModelConfig:
    base = dict(window=Window(2, 4, 2), hidden_width=32, depth=2)
    teacher = "diffusion" if objective == "consistency" else None
    return ModelConfig(**{**base, **kw}, objective=objective, teacher=teacher)


def test_objectives_build_their_models_and_config_is_validated():
    assert isinstance(build_policy_model(small("flow"), 3, 1, NORMALIZER), FlowPolicyModel)
    consistency = build_policy_model(small("consistency"), 3, 1, NORMALIZER)
    assert isinstance(consistency, ConsistencyPolicyModel)
    # The student's weights are named like a DDPM policy's, and the teacher is not state.
    ddpm = build_policy_model(small("ddpm"), 3, 1, NORMALIZER)
    assert consistency.state_dict().keys() == ddpm.state_dict().keys()
    with pytest.raises(ValueError, match="needs a teacher"):
        ModelConfig(objective="consistency")
    with pytest.raises(ValueError, match="only it takes one"):
        ModelConfig(teacher="diffusion")
    with pytest.raises(ValueError, match="objective must be one of"):
        ModelConfig(objective="edm")
    with pytest.raises(ValueError, match="diffusion policy only"):
        ModelConfig(policy_type="bc", objective="flow")


def test_a_ddpm_runs_identity_is_what_it_was_before_objectives_existed():
    from diffpol.trainer import Config
    from diffpol.trainer.training import run_identity

    ddpm = run_identity(Config(), "f" * 64)["model"]
    assert "objective" not in ddpm and "flow_time_sampling" not in ddpm
    flow = run_identity(Config(model=small("flow")), "f" * 64)["model"]
    assert flow["objective"] == "flow" and flow["flow_time_sampling"] == "beta"


@pytest.mark.parametrize("sampling", ["uniform", "beta"])
def test_flow_loss_is_the_velocity_regression_of_the_denoiser(sampling):
    torch.manual_seed(0)
    model = build_policy_model(small("flow", flow_time_sampling=sampling), 3, 1, NORMALIZER)
    obs, action = torch.randn(16, 6), torch.rand(16, 4) * 2 - 1
    loss = model.compute_loss(obs, action, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(action.shape, generator=generator)
    t = sample_times(16, sampling, generator)
    x_t = (1 - t[:, None]) * noise + t[:, None] * action
    expected = ((model.denoiser(x_t, obs, t * TIME_SCALE) - (action - noise)) ** 2).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_flow_loop_is_euler_on_the_denoisers_velocity(steps):
    torch.manual_seed(1)
    model = build_policy_model(small("flow"), 3, 1, NORMALIZER).eval()
    loop = model.sampling_loop("flow", steps)
    assert (loop.sampler, loop.steps, loop.step_noise_steps) == ("flow", steps, 0)
    obs, noise = torch.randn(3, 2, 3), torch.randn(3, 4, 1)
    x = noise.flatten(1)
    for k in range(steps):
        t = torch.full((3,), k / steps * TIME_SCALE)
        x = x + model.denoiser(x, obs.flatten(1), t) / steps
    with torch.no_grad():
        torch.testing.assert_close(loop(obs, noise), x.unflatten(1, (4, 1)), atol=1e-5, rtol=0)
    assert loop.spec.updates == FlowScheduler("euler").set_timesteps(steps).updates()


def test_flow_midpoint_loop_calls_the_denoiser_twice_per_step():
    torch.manual_seed(2)
    model = build_policy_model(small("flow"), 3, 1, NORMALIZER).eval()
    loop = model.sampling_loop("flow-midpoint", 4)
    assert loop.steps == 4
    obs, noise = torch.randn(3, 2, 3), torch.randn(3, 4, 1)
    x, o = noise.flatten(1), obs.flatten(1)

    def v(x, t):
        return model.denoiser(x, o, torch.full((3,), t * TIME_SCALE))

    for t in (0.0, 0.5):
        x = x + 0.5 * v(x + 0.25 * v(x, t), t + 0.25)
    with torch.no_grad():
        torch.testing.assert_close(loop(obs, noise), x.unflatten(1, (4, 1)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="even number"):
        model.sampling_loop("flow-midpoint", 3)


def test_consistency_loop_is_algorithm_1_with_the_step_noise():
    torch.manual_seed(3)
    model = build_policy_model(small("consistency"), 3, 1, NORMALIZER).eval()
    loop = model.sampling_loop("consistency", 2)
    assert (loop.sampler, loop.steps, loop.step_noise_steps) == ("consistency", 2, 1)
    obs, noise, z = torch.randn(3, 2, 3), torch.randn(3, 4, 1), torch.randn(3, 1, 4, 1)
    distillation = ConsistencyDistillation(model.config.schedule)
    o = obs.flatten(1)

    def f(x, t):  # sample prediction, clipped
        return model.denoiser(x, o, torch.full((3,), t)).clamp(-1, 1)

    x0 = f(noise.flatten(1), 90)
    abar = distillation.scheduler.abar(40)
    x0 = f(abar**0.5 * x0 + (1 - abar) ** 0.5 * z[:, 0].flatten(1), 40)
    with torch.no_grad():
        torch.testing.assert_close(loop(obs, noise, z), x0.unflatten(1, (4, 1)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="step_noise"):
        loop(obs, noise)
    with pytest.raises(ValueError, match="samples with consistency"):
        model.sampling_loop("ddim", 10)


def test_consistency_loss_needs_its_teacher_and_starts_at_the_teachers_ladder_error():
    torch.manual_seed(4)
    student = build_policy_model(small("consistency"), 3, 1, NORMALIZER)
    obs, action = torch.randn(32, 6), torch.rand(32, 4) * 2 - 1
    with pytest.raises(RuntimeError, match="teacher attached"):
        student.compute_loss(obs, action)
    teacher = build_policy_model(small("ddpm"), 3, 1, NORMALIZER)
    student.set_teacher(teacher)
    loss = student.compute_loss(obs, action)
    loss.backward()
    assert all(p.grad is not None for p in student.denoiser.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert "_teacher" not in dict(student.named_modules())


def _fit(model, obs, action, steps: int) -> EMA:
    ema = EMA(model, decay=0.99)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (256,), generator=generator)
        loss = model.compute_loss(obs[idx], action[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
    return ema


def test_flow_keeps_both_modes():
    # modeling_test has the same data for DDPM, where BC collapses to the mean. With 10
    # Euler steps; 2 steps spread the samples between the modes (the marginal flow of two
    # modes is curved), which is what consistency distillation is for.
    steps = 10
    torch.manual_seed(0)
    torch.set_num_threads(1)
    obs_np, action_np = bimodal_samples(4096, obs_dim=3, seed=0)
    obs = torch.tensor(obs_np).flatten(1)
    action = torch.tensor(action_np).flatten(1) / 1.2
    config = ModelConfig(
        window=Window(1, 1, 1),
        hidden_width=64,
        depth=2,
        objective="flow",
        schedule=NoiseScheduleConfig(num_train_timesteps=50),
    )
    flow = _fit(build_policy_model(config, 3, 1, NORMALIZER), obs, action, steps=1500)
    query = torch.zeros(2000, 1, 3)
    noise = torch.randn(2000, 1, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sampled = flow.averaged.sampling_loop("flow", steps)(query, noise).flatten() * 1.2
    near_plus = (sampled - 1).abs() < 0.25
    near_minus = (sampled + 1).abs() < 0.25
    assert 0.3 < near_plus.float().mean() < 0.7, "flow lost the +1 mode"
    assert 0.3 < near_minus.float().mean() < 0.7, "flow lost the -1 mode"
    assert (near_plus | near_minus).float().mean() > 0.85
    assert sampled.mean().abs() < 0.2


def test_one_run_trains_a_teacher_then_its_consistency_student_and_a_flow_policy(
    ray_local, tmp_path
):
    import dataclasses

    import numpy as np

    from diffpol.trainer import Config, OptimConfig, PolicyRun, TrainConfig, load_policy
    from diffpol.trainer.checkpoint import load_policy_weights
    from diffpol.trainer.synthetic import write_samples
    from diffpol.trainer.training import train_many

    obs, action = bimodal_samples(400, n_obs_steps=2, horizon=4, seed=4)
    samples = write_samples(tmp_path / "samples", obs, action, val_fraction=0.2)
    base = Config(
        model=small("ddpm", hidden_width=16, depth=1),
        optim=OptimConfig(warmup_steps=2),
        train=TrainConfig(epochs=2, batch_size=64, keep_checkpoints=1, max_failures=0),
    )

    def run(name: str, objective: str, epochs: int) -> PolicyRun:
        model = dataclasses.replace(
            base.model,
            objective=objective,
            teacher="diffusion" if objective == "consistency" else None,
        )
        train = dataclasses.replace(
            base.train, epochs=epochs, storage_path=str(tmp_path / "ray"), run_name="fewstep"
        )
        return PolicyRun(dataclasses.replace(base, model=model, train=train), tmp_path / name)

    # A student before its teacher is refused before anything trains.
    with pytest.raises(ValueError, match="trained before it"):
        train_many(samples, {"student": run("student", "consistency", 1)})
    results = train_many(
        samples,
        {
            "diffusion": run("diffusion", "ddpm", 2),
            "consistency": run("consistency", "consistency", 1),
            "flow": run("flow", "flow", 2),
        },
    )
    assert {name: r.epochs_completed for name, r in results.items()} == {
        "diffusion": 2,
        "consistency": 1,
        "flow": 2,
    }
    teacher = load_policy_weights(results["diffusion"].checkpoint_dir)["ema"]
    student = load_policy_weights(results["consistency"].checkpoint_dir)["model"]
    # The student started as the teacher and moved (one epoch of distillation).
    assert student.keys() == teacher.keys()
    moved = max((student[k] - teacher[k]).abs().max().item() for k in teacher)
    assert 0 < moved < 1.0
    query = obs[:8].astype(np.float32)
    for name, sampler, steps in [("consistency", "consistency", 1), ("flow", "flow", 2)]:
        policy = load_policy(results[name].checkpoint_dir, sampler, steps)
        actions = policy.act(query, seed=1)
        assert actions.shape == (8, 2, 1) and np.isfinite(actions).all()
