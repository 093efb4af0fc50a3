"""LAOM and LAOM-Labels: the EMA target's rate, the detached FDM input, the augmentations,
the labelled subset of LAOM-Labels, the metrics contract, and the comparison's and the
downstream protocol's use of a LAOM (all on tiny synthetic data, seconds each)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from common.codec import Chunk, encode_chunk
from common.dataset import DatasetWriter
from conftest import transition_data_of
from learner import compare
from learner.compare import CompareConfig, Job, LAOMFamilyConfig, run_job
from learner.data import TransitionData, gather_windows
from learner.downstream import DownstreamConfig, train_latent_bc
from learner.lam.train import cosine_schedule
from learner.laom import train as laom_train
from learner.laom.augment import augment, shift_matrices, warp
from learner.laom.batch import labelled_starts, make_batch
from learner.laom.config import LAOMConfig, LAOMModelConfig, LAOMOptimConfig, laom_config
from learner.laom.train import (apply_update, build_model, feature_loss, laom_losses, load_model,
                                target_and_weights, train_laom)
from learner.methods import METHODS, family, latent_actions
from learner.probe import make_probe_set

SIZE, ACTIONS, CHUNK = 16, 3, 20  # frames per chunk: CHUNK + 1


def tiny_config(method: str = "laom", **method_overrides) -> LAOMConfig:
    base = laom_config("ci", method)
    return LAOMConfig(LAOMModelConfig(num_blocks=1, latent_dim=8, head_dim=16, head_depth=1),
                      dataclasses.replace(base.method, max_future_offset=3, **method_overrides),
                      LAOMOptimConfig(batch_size=4, updates=4, label_batch_size=5, target_tau=0.1))


def random_data(chunks: int = 6, seed: int = 0) -> TransitionData:
    rng = np.random.default_rng(seed)
    n = chunks * (CHUNK + 1)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    masks[:, 4:12, 5:11] = 1
    return transition_data_of(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), masks,
                              rng.uniform(-1, 1, (n, ACTIONS)).astype(np.float32),
                              rng.normal(size=(n, 2)).astype(np.float32),
                              chunk_length=np.full(chunks, CHUNK + 1), chunk_episode=np.arange(chunks))


def one_batch(config: LAOMConfig, data: TransitionData, size: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    starts = data.window_starts(config.method.window)[:size]
    offsets = rng.integers(1, config.method.max_future_offset + 1, size=size)
    return make_batch(gather_windows(data, starts, config.method.window), config.method, offsets)


def test_ema_target_moves_by_the_set_rate_after_one_update():
    config, data = tiny_config(), random_data()
    torch.manual_seed(0)
    model = build_model(config, SIZE, ACTIONS)
    optimizer = torch.optim.AdamW(model.online_parameters(), lr=1e-2)
    scheduler = cosine_schedule(optimizer, 10)
    old_target = [p.clone() for p in model.target_encoder.parameters()]
    losses = laom_losses(model, config, one_batch(config, data), None, torch.Generator().manual_seed(0))
    apply_update(model, optimizer, scheduler, losses["loss"], tau=0.1)
    online = list(model.encoder.parameters())
    assert any(not torch.equal(o, t) for o, t in zip(online, old_target))  # the encoder did move
    for target, old, new in zip(model.target_encoder.parameters(), old_target, online):
        torch.testing.assert_close(target, 0.9 * old + 0.1 * new)
        assert not target.requires_grad
    assert all(p.requires_grad for p in model.online_parameters())
    assert not any(p is q for p in model.online_parameters() for q in model.target_encoder.parameters())


def test_fdm_input_carries_no_gradient_into_the_encoder():
    config, data = tiny_config(augment=False), random_data()
    model = build_model(config, SIZE, ACTIONS)
    batch = one_batch(config, data)
    target = model.target_features(batch.next_obs)

    def encoder_grads() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        prediction, _ = model(batch.obs, batch.future)
        (prediction - target).pow(2).mean().backward()
        return [p.grad for p in model.encoder.parameters()]

    assert any(g is not None and g.abs().sum() > 0 for g in encoder_grads())  # through z = IDM(e_t, e_{t+k})
    constant = torch.randn(4, config.model.latent_dim)
    model.idm_head.forward = lambda x, condition: constant  # cut the path through z: only e_t is left
    assert all(g is None or torch.count_nonzero(g) == 0 for g in encoder_grads())
    assert all(p.grad is not None for p in model.fdm_head.parameters())  # the FDM itself still learns


def test_augmentations_keep_shapes_and_differ_per_frame_and_per_sample():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    stacked = image.repeat(16, 3, 1, 1)  # 16 samples of one observation: 3 identical frames
    first, second = augment(stacked, generator), augment(stacked, generator)  # e.g. o_t and o_{t+k}
    assert first.shape == stacked.shape and first.dtype == stacked.dtype
    changed = lambda a, b: (a - b).abs().flatten(1).amax(1) > 1e-4  # noqa: E731
    assert changed(first, second).sum() >= 12  # independent draws per observation (1/64 both identity)
    assert changed(first[:8], first[8:]).sum() >= 6  # and per sample
    assert changed(first, stacked).sum() >= 10  # 1 of the 8 kinds is the identity
    torch.testing.assert_close(first[:, :3], first[:, 3:6])  # the frames of one stack share the warp
    torch.testing.assert_close(first[:, :3], first[:, 6:])
    assert first.min() >= stacked.min() - 1e-5 and first.max() <= stacked.max() + 1e-5  # edge fill, no zeros


def test_a_whole_pixel_shift_moves_the_image_and_repeats_its_edge():
    image = torch.arange(SIZE * SIZE, dtype=torch.float32).reshape(1, 1, SIZE, SIZE)
    matrix = shift_matrices(1, SIZE, torch.Generator().manual_seed(0))
    matrix[0, :2, 2] = torch.tensor([2.0, 0.0]) * 2 / SIZE  # sample 2 px to the right
    shifted = warp(image, matrix)
    torch.testing.assert_close(shifted[..., :-2], image[..., 2:])
    torch.testing.assert_close(shifted[..., -2:], image[..., -1:].expand(-1, -1, -1, 2))


def test_labelled_starts_lie_within_the_first_budget_transitions():
    data = random_data()  # chunks of CHUNK transitions (CHUNK + 1 frames)
    window = 6  # 5 transitions per window
    assert len(labelled_starts(data, window, CHUNK)) == CHUNK - window + 2  # the whole first chunk
    assert len(labelled_starts(data, window, CHUNK + 4)) == CHUNK - window + 2  # 4 more: no whole window
    assert len(labelled_starts(data, window, CHUNK + 7)) == CHUNK - window + 2 + 3
    assert len(labelled_starts(data, window, 0)) == 0
    assert len(labelled_starts(data, window, 10**6)) == len(data.window_starts(window))


def test_laom_labels_draws_its_supervised_batches_only_from_the_labelled_subset(tmp_path, monkeypatch):
    data = random_data()
    budget = CHUNK + 7
    config = tiny_config("laom-labels", label_budget=budget)
    window = config.method.window
    drawn: list[tuple[int, np.ndarray]] = []

    def recording_sample(data, starts, batch, window, rng):  # learner.data.sample_windows, recording
        chosen = starts[rng.integers(len(starts), size=batch)]
        drawn.append((batch, chosen))
        return gather_windows(data, chosen, window)

    monkeypatch.setattr(laom_train, "sample_windows", recording_sample)
    probe_sets = {name: make_probe_set(data, config.method.probe_window, 60, seed=0) for name in ("eval", "indist")}
    metrics = train_laom(config, data, probe_sets, tmp_path, seed=0, eval_every=2, log_every=1)
    labelled = [starts for size, starts in drawn if size == config.optim.label_batch_size]
    unlabelled = [starts for size, starts in drawn if size == config.optim.batch_size]
    assert len(labelled) == len(unlabelled) == config.optim.updates
    last_labelled_row = CHUNK + 1 + (budget - CHUNK) - 1  # chunk 0's rows, then 7 transitions of chunk 1
    rows = np.concatenate([s[:, None] + np.arange(window - 1) for s in labelled])  # their transitions
    assert rows.max() <= last_labelled_row
    assert len(np.unique(rows)) <= budget
    assert np.concatenate(unlabelled).max() + window - 2 > last_labelled_row  # the test can tell them apart
    assert metrics["final_losses"]["label"] > 0


def test_tiny_laom_trains_writes_the_metrics_contract_and_resumes(tmp_path):
    data = random_data()
    config = tiny_config("laom-mask")
    probe_sets = {name: make_probe_set(data, config.method.probe_window, 60, seed=0) for name in ("eval", "indist")}
    metrics = train_laom(config, data, probe_sets, tmp_path, seed=1, eval_every=2, log_every=1)
    contract = {"probe_nmse", "probe_nmse_per_dim", "probe_nmse_indist", "background_nmse", "probe_nmse_online",
                "final_losses", "loss_curve", "probe_curve", "train_seconds", "updates_per_s", "parameters",
                "updates", "config", "seed"}
    assert contract <= set(metrics) and metrics["updates"] == 4 and metrics["seed"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert len(metrics["probe_nmse_per_dim"]) == ACTIONS and metrics["probe_nmse"] > 0
    assert [p["update"] for p in metrics["probe_curve"]] == [0, 2, 4]
    assert {"loss", "reconstruction", "probe"} <= set(metrics["final_losses"])
    assert all(np.isfinite(c["loss"]) for c in metrics["loss_curve"])

    stamp = (tmp_path / "checkpoint.pt").stat().st_mtime_ns
    assert train_laom(config, data, probe_sets, tmp_path, seed=1, eval_every=2) == metrics  # reused, not retrained
    assert (tmp_path / "checkpoint.pt").stat().st_mtime_ns == stamp
    model, saved = load_model(tmp_path)
    assert saved == config
    rows = np.arange(3, 15)
    z = latent_actions(model, saved, data, rows)  # the family interface the downstream protocol uses
    assert z.shape == (len(rows), config.model.latent_dim)


def test_masked_target_encoder_input_ignores_the_background():
    config, data = tiny_config(augment=False, target_masking="input"), random_data()
    model = build_model(config, SIZE, ACTIONS)
    batch = one_batch(config, data)
    background = (batch.next_masks == 0).repeat_interleave(3, dim=1)  # frame-major RGB channels
    noisy = dataclasses.replace(batch, next_obs=batch.next_obs + 0.5 * background)
    clean_target, weights = target_and_weights(model, config.method, batch, None)
    torch.testing.assert_close(target_and_weights(model, config.method, noisy, None)[0], clean_target)
    assert weights is None
    assert torch.isfinite(laom_losses(model, config, batch, None, torch.Generator().manual_seed(0))["loss"])


def test_feature_masking_weighs_each_location_by_the_agent_share():
    config, data = tiny_config(augment=False, target_masking="features"), random_data()
    model = build_model(config, SIZE, ACTIONS)
    batch = one_batch(config, data)
    masks = torch.zeros_like(batch.next_masks)
    masks[:, -1, : SIZE // 2, : SIZE // 2] = 1  # the agent fills the top-left quarter of o_{t+1}
    target, weights = target_and_weights(model, config.method, dataclasses.replace(batch, next_masks=masks), None)
    assert target.shape[-2:] == (2, 2)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(4, 2, 2))

    prediction = target.clone()
    prediction[:, :, 1, 1] += 5.0  # wrong only where there is no agent
    assert feature_loss(prediction, target, weights) == 0
    prediction[:, :, 0, 0] += 1.0
    assert feature_loss(prediction, target, weights).item() == pytest.approx(1.0)
    torch.testing.assert_close(feature_loss(prediction, target, torch.ones_like(weights)),
                               feature_loss(prediction, target, None))  # all-agent weights: the plain loss


def write_dataset(directory, seed: int, episodes: int = 5) -> str:
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(directory, {"synthetic": True})
    for episode in range(episodes):
        masks = np.zeros((CHUNK + 1, SIZE, SIZE), np.uint8)
        masks[:, 3:12, 4:10] = 1
        chunk = Chunk(env_id="Synthetic-v0", actor_id=0, episode_id=f"ep-{episode}", start_step=0,
                      frames=rng.integers(0, 256, (CHUNK + 1, SIZE, SIZE, 3), dtype=np.uint8), masks=masks,
                      actions=rng.uniform(-1, 1, (CHUNK, ACTIONS)).astype(np.float32),
                      rewards=np.zeros(CHUNK, np.float32), terminated=np.zeros(CHUNK, bool),
                      truncated=np.zeros(CHUNK, bool), states=np.zeros((CHUNK + 1, 4), np.float32),
                      bg_velocity=rng.normal(size=(CHUNK, 2)).astype(np.float32))
        writer.append_blob(encode_chunk(chunk)[0])
    writer.close()
    return str(directory)


def test_compare_runs_laom_labels_and_its_latents_feed_latent_bc(tmp_path):
    assert {"lapo", "masklam", "masklam-paper", "laom", "laom-labels", "laom-mask"} <= set(METHODS)
    assert family("laom-labels").name == "laom" and family("masklam").name == "lam"
    data = {name: write_dataset(tmp_path / name, seed) for seed, name in enumerate(("train", "indist", "eval"))}
    tiny = tiny_config("laom-labels", label_budget=30)  # the ci preset, shrunk to seconds
    laom = LAOMFamilyConfig(model=tiny.model, optim=dataclasses.replace(tiny.optim, updates=3, batch_size=4),
                            methods={"laom-labels": tiny.method})
    config = CompareConfig(methods="laom-labels", seeds=1, eval_every=2, probe_samples=60, laom=laom)
    out = tmp_path / "run"
    metrics = run_job(Job("laom-labels", 0, data, str(out), config, expert=None))
    assert metrics["updates"] == 3 and metrics["config"]["method"]["labels"] is True
    assert (out / "metrics.json").is_file() and (out / "checkpoint.pt").is_file()
    assert set(compare.SCALARS) <= set(metrics)

    model, saved = load_model(out)
    train = compare.load_dataset(data["train"])
    policy, bc = train_latent_bc(model, saved, train, DownstreamConfig(bc_updates=2, bc_batch_size=4), seed=0)
    assert policy.spec.latent_dim == saved.model.latent_dim and np.isfinite(bc["bc_loss"])
