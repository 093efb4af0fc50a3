"""LAM models, batches and losses: the masked loss's defining properties, shapes of every
variant, that a small model can fit one batch, and that seeded training keeps its numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  (loads triton at collection, before any test renders: loading it
# after MuJoCo's EGL context crashed pytest once, when AdamW first imported it)

from common.masks import morph_mask
from common.windows import Windows
from conftest import transition_data_of, windows_of
from learner.compute import PLAIN, Compute, ComputeConfig
from learner.data import TransitionData
from learner.lam.batch import input_channels, make_batch, occlude_mask
from learner.lam.config import METHODS, LAMConfig, MethodConfig, ModelConfig, OptimConfig, lam_config
from learner.lam.objective import reconstruction_loss
from learner.lam.train import build_model, lam_step, load_model, train_lam
from learner.probe import make_probe_set

SIZE, ACTIONS = 16, 6


def random_frames(batch: int, window: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(frames, masks, actions, background velocities), one row per frame."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, window, SIZE, SIZE), np.uint8)
    masks[:, :, 4:10, 5:12] = 1  # the "agent": a block, so morphology has edges to act on
    return (rng.integers(0, 256, (batch, window, SIZE, SIZE, 3), dtype=np.uint8), masks,
            rng.uniform(-1, 1, (batch, window, ACTIONS)).astype(np.float32),
            rng.normal(size=(batch, window, 2)).astype(np.float32))


def random_windows(batch: int, window: int, seed: int = 0) -> Windows:
    return windows_of(*random_frames(batch, window, seed))


def test_masked_loss_equals_plain_loss_with_all_ones_mask():
    prediction, target = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    plain = reconstruction_loss(prediction, target, None)
    masked = reconstruction_loss(prediction, target, torch.ones(4, 8, 8))
    torch.testing.assert_close(masked, plain)
    torch.testing.assert_close(plain, ((prediction - target) ** 2).sum(1).mean())


def test_masked_loss_normalises_by_mask_area_over_the_batch():
    prediction, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4)
    mask[0, 0, :3] = 1  # 3 agent pixels in sample 0, 1 in sample 1: each has error 3 (RGB summed)
    mask[1, 2, 2] = 1
    assert reconstruction_loss(prediction, target, mask).item() == pytest.approx(3.0)


def test_background_pixels_get_exactly_zero_gradient_under_masklam():
    config = lam_config("ci", "masklam")
    small = dataclasses.replace(config, model=dataclasses.replace(config.model, num_blocks=1))
    model = build_model(small, SIZE, ACTIONS)
    batch = make_batch(random_windows(4, config.method.window), config.method, config.model, np.ones(4, np.int64),
                       torch.Generator().manual_seed(0))
    prediction, _, _ = model(batch.idm_input, batch.fdm_input)
    prediction.retain_grad()
    reconstruction_loss(prediction, batch.target, batch.target_mask).backward()
    background = (batch.target_mask == 0)[:, None].expand_as(prediction)
    assert background.any() and (~background).any()
    assert torch.count_nonzero(prediction.grad[background]) == 0
    assert torch.count_nonzero(prediction.grad[~background]) > 0


VARIANTS = {
    **{name: method for name, method in METHODS.items()},
    "input-masking": MethodConfig(loss="masked", input_masking=True),
    "dilate": MethodConfig(loss="masked", mask_radius=1),
    "erode-occlude": MethodConfig(loss="masked", mask_radius=-1, occlusion=0.5, mask_channel=True),
    "offset": MethodConfig(loss="masked", max_future_offset=3, future_frames=2),
}


@pytest.mark.parametrize("quantizer", ["none", "vq"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_of_every_variant(variant, quantizer):
    method = VARIANTS[variant]
    model_config = ModelConfig(num_blocks=1, latent_dim=8, quantizer=quantizer, vq_groups=2, vq_codes=16)
    model = build_model(LAMConfig(model_config, method), SIZE, ACTIONS)
    b = 3
    offsets = np.random.default_rng(0).integers(1, method.max_future_offset + 1, size=b)
    batch = make_batch(random_windows(b, method.window), method, model_config, offsets, torch.Generator())
    idm_channels, fdm_channels = input_channels(method, model_config)
    assert batch.idm_input.shape == (b, idm_channels, SIZE, SIZE)
    assert batch.fdm_input.shape == (b, fdm_channels, SIZE, SIZE)
    assert batch.target.shape == (b, 3, SIZE, SIZE) and batch.target_mask.shape == (b, SIZE, SIZE)
    assert batch.action.shape == (b, ACTIONS) and batch.bg_velocity.shape == (b, 2)
    assert float(batch.target.min()) >= -0.5 and float(batch.target.max()) <= 0.5
    prediction, z, vq_loss = model(batch.idm_input, batch.fdm_input)
    assert prediction.shape == (b, 3, SIZE, SIZE) and z.shape == (b, 8) and vq_loss.shape == ()
    if quantizer == "vq":  # every sub-vector is a codebook entry
        parts = z.detach().reshape(-1, 4)
        assert torch.cdist(parts, model.quantizer.codebook).min(dim=1).values.max() < 1e-5


def test_target_is_the_frame_at_the_sampled_offset():
    method = MethodConfig(context_frames=2, future_frames=1, max_future_offset=3)
    windows = random_windows(3, method.window)
    offsets = np.array([1, 2, 3])
    batch = make_batch(windows, method, ModelConfig(), offsets, torch.Generator())
    for i, k in enumerate(offsets):
        expected = torch.from_numpy(windows.frames[i, 1 + k]).permute(2, 0, 1).float() / 255 - 0.5
        torch.testing.assert_close(batch.target[i], expected)
        torch.testing.assert_close(batch.action[i], torch.from_numpy(windows.actions[i, 1]))


def test_mask_morphology_and_occlusion():
    mask = torch.zeros(1, 9, 9)
    mask[0, 3:6, 3:6] = 1
    assert morph_mask(mask, 1).sum() == 25 and morph_mask(mask, -1).sum() == 1 and morph_mask(mask, 0) is mask
    full = torch.ones(64, 32, 32)
    kept = occlude_mask(full, 0.5, torch.Generator().manual_seed(0)).mean().item()
    assert 0.4 < kept < 0.6
    assert occlude_mask(full, 0.0, torch.Generator()) is full


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    config = LAMConfig(ModelConfig(num_blocks=1, latent_dim=8), MethodConfig(loss="masked"),
                       OptimConfig(batch_size=8, lr=1e-3))
    model = build_model(config, SIZE, ACTIONS)
    windows = random_windows(8, config.method.window)
    windows.frames[:, 1] = np.roll(windows.frames[:, 0], 1, axis=2)  # the next frame: this one moved right
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    rng, generator = np.random.default_rng(0), torch.Generator()
    compute = Compute.resolve(ComputeConfig(), "cpu")  # the default path: what the trainers run
    compute.prepare(model)
    losses = [lam_step(model, optimizer, config, windows, rng, generator, compute=compute)["reconstruction"].item()
              for _ in range(150)]
    assert losses[-1] < 0.1 * losses[0]


def tiny_dataset() -> TransitionData:
    n = 4 * 17  # four chunks of 17 frames, two episodes
    return transition_data_of(*(array[0] for array in random_frames(1, n)), chunk_length=np.full(4, 17),
                              chunk_episode=np.array([0, 0, 1, 1]))


# Losses (means over 3 updates) of the seeded runs below, recorded before the offline trainer,
# the online learner and the benchmark shared one update step: the objective must not drift.
# They are the plain fp32 NCHW path's (learner/compute.py); tests/test_compute.py relates the others to it.
PINNED_LOSSES = {
    ("masked", "none"): [{"loss": 0.314463, "reconstruction": 0.308209, "vq": 0.0, "probe": 0.625407},
                         {"loss": 0.278875, "reconstruction": 0.274243, "vq": 0.0, "probe": 0.463246}],
    ("mse", "vq"): [{"loss": 0.278618, "reconstruction": 0.26086, "vq": 0.132872, "probe": 0.447105},
                    {"loss": 0.264977, "reconstruction": 0.25447, "vq": 0.063202, "probe": 0.418684}],
}


@pytest.mark.parametrize("loss, quantizer", list(PINNED_LOSSES))
def test_seeded_training_losses_are_unchanged(tmp_path, loss, quantizer):
    data = tiny_dataset()
    config = LAMConfig(ModelConfig(num_blocks=1, latent_dim=8, quantizer=quantizer, vq_groups=2, vq_codes=16),
                       MethodConfig(loss=loss, max_future_offset=2), OptimConfig(batch_size=4, updates=6))
    metrics = train_lam(config, data, {"eval": make_probe_set(data, 2, 40, seed=0)}, tmp_path, seed=1,
                        eval_every=100, log_every=3, compute=PLAIN)
    curve = [{k: v for k, v in logged.items() if k != "update"} for logged in metrics["loss_curve"]]
    assert curve == [{k: pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in logged.items()}
                     for logged in PINNED_LOSSES[loss, quantizer]]


def test_training_checkpoints_and_resumes(tmp_path):
    data = tiny_dataset()
    config = LAMConfig(ModelConfig(num_blocks=1, latent_dim=8), MethodConfig(loss="masked"),
                       OptimConfig(batch_size=4, updates=4))
    probes = {"eval": make_probe_set(data, 2, 40, seed=0), "indist": make_probe_set(data, 2, 40, seed=1)}
    first = train_lam(config, data, probes, tmp_path, seed=0, eval_every=2, log_every=1)
    assert first["updates"] == 4 and [p["update"] for p in first["probe_curve"]] == [0, 2, 4]
    (tmp_path / "metrics.json").unlink()  # as if the run died after its last checkpoint
    resumed = train_lam(config, data, probes, tmp_path, seed=0, eval_every=2, log_every=1)
    assert resumed["loss_curve"] == first["loss_curve"] and resumed["probe_nmse"] == first["probe_nmse"]
    model, saved = load_model(tmp_path)
    assert saved == config and model.probe.out_features == ACTIONS
