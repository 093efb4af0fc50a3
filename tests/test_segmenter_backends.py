"""Segmenter backends and their parts: SAM (a tiny random-weight model through the real
loading path), its prompting rules, the online student, the imperfection knobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.cli import ConfigError
from common.codec import Chunk
from common.config import validate
from common.metrics import Metrics
from conftest import synthetic_chunk
from segmenter.backends.oracle import OracleBackend
from segmenter.backends.sam import SamBackend, SamConfig
from segmenter.backends.sam_models import CHECKPOINTS_URL, SamCheckpointError, build_tiny_sam, load_sam
from segmenter.backends.sam_prompting import (EpisodeMemory, mask_box, plausible, propagate_box,
                                              select_agent_mask)
from segmenter.backends.student import StudentBackend, StudentConfig
from segmenter.config import SegmenterConfig
from segmenter.imperfection import Imperfection, ImperfectionConfig, morph
from segmenter.quality import mask_iou
from segmenter.service import SegmenterService


def square_chunk(rng: np.random.Generator, steps: int = 8, size: int = 32, episode: str = "ep-0",
                 first_step: int = 0) -> Chunk:
    """Noise frames with one bright square each (the 'agent'), and its mask as ground truth."""
    chunk = synthetic_chunk(num_steps=steps, size=size, first_step=first_step, episode_id=episode)
    frames = rng.integers(0, 150, (steps + 1, size, size, 3), dtype=np.uint8)
    masks = np.zeros((steps + 1, size, size), np.uint8)
    for t in range(steps + 1):
        side = int(rng.integers(size // 6, size // 3))
        y, x = rng.integers(0, size - side, 2)
        masks[t, y:y + side, x:x + side] = 1
    frames[masks.astype(bool)] = rng.integers(200, 256, (int(masks.sum()), 3), dtype=np.uint8)
    chunk.frames, chunk.masks = frames, masks
    return chunk


@pytest.fixture
def one_thread():
    """Torch on one thread: on a busy 2-core runner, idle threads spinning at barriers cost more than they add."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return str(path)


# -- imperfection and quality -----------------------------------------------------------------
def test_dilation_and_erosion_use_a_square_of_the_given_radius():
    dot = np.zeros((1, 7, 7), np.uint8)
    dot[0, 3, 3] = 1
    assert morph(dot, 1).sum() == 9 and morph(dot, 2).sum() == 25
    block = morph(dot, 2)
    np.testing.assert_array_equal(morph(block, -2), dot)
    np.testing.assert_array_equal(morph(block, -1), morph(dot, 1))
    assert morph(np.ones((1, 4, 4), np.uint8), -1).sum() == 4  # outside the frame is background


def test_dropout_replaces_whole_masks_by_all_ones_at_the_configured_rate():
    masks = np.zeros((2000, 4, 4), np.uint8)
    served, dropped = Imperfection(ImperfectionConfig(mask_dropout=0.25), seed=0).apply(masks)
    assert 0.2 < dropped.mean() < 0.3
    assert served[dropped].all() and not served[~dropped].any()
    with pytest.raises(ConfigError, match="mask-dropout"):  # refused where the command line is parsed
        validate(ImperfectionConfig(mask_dropout=1.5))


def test_iou_per_frame_counts_two_empty_masks_as_agreement():
    a = np.zeros((3, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2], b[0, :1] = 1, 1  # 8 vs 4 pixels, nested
    b[1, 0, 0] = 1  # disjoint from an empty mask
    np.testing.assert_allclose(mask_iou(a, b), [0.5, 0.0, 1.0])


# -- SAM prompting rules ---------------------------------------------------------------------
def test_propagated_box_grows_the_previous_mask_box_and_stays_in_the_frame():
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 10:50] = 1
    np.testing.assert_array_equal(mask_box(mask), [10, 20, 50, 30])
    np.testing.assert_allclose(propagate_box(mask, 0.1), [10 - 6, 20 - 3, 50 + 6, 30 + 3])
    corner = np.zeros((64, 64), np.uint8)
    corner[:5, :5] = 1
    np.testing.assert_allclose(propagate_box(corner, 0.5), [0, 0, 9.5, 9.5])
    assert propagate_box(np.zeros((8, 8), np.uint8), 0.1) is None


def test_selection_keeps_the_central_agent_over_sky_floor_and_clutter():
    sky = np.zeros((64, 64), np.uint8)
    sky[:30] = 1
    floor = np.zeros_like(sky)
    floor[44:] = 1
    agent = np.zeros_like(sky)
    agent[26:40, 20:44] = 1
    clutter = np.zeros_like(sky)
    clutter[2:10, 50:60] = 1
    speck = np.zeros_like(sky)
    speck[32, 32] = 1
    candidates = [sky, floor, clutter, agent, speck]
    assert select_agent_mask(candidates, [0.99, 0.99, 0.99, 0.9, 0.99], min_area=0.003, max_area=0.4) == 3
    assert not plausible(sky, 0.0, 1.0) and plausible(agent, 0.003, 0.4)
    assert select_agent_mask([sky, floor], [1.0, 1.0], 0.003, 0.4) is None


def test_episode_memory_returns_a_mask_only_for_the_frame_it_was_found_on():
    memory = EpisodeMemory(capacity=2)
    mask = np.ones((2, 2), np.uint8)
    memory.put("a", 8, mask)
    assert memory.get("a", 8) is mask and memory.get("a", 9) is None
    memory.put("b", 1, mask)
    memory.put("c", 1, mask)
    assert memory.get("a", 8) is None  # least recently used is forgotten


# -- SAM model loading ----------------------------------------------------------------------
def test_missing_checkpoint_error_names_the_path_the_model_type_and_where_to_get_it(tmp_path):
    missing = tmp_path / "nowhere" / "sam_vit_b.pth"
    with pytest.raises(SamCheckpointError) as err:
        load_sam("vit_b", str(missing))
    text = str(err.value)
    assert str(missing) in text and CHECKPOINTS_URL in text and "sam_vit_b_01ec64.pth" in text
    with pytest.raises(SamCheckpointError, match="needs --segmenter.sam-checkpoint"):
        load_sam("vit_h", None)


def test_checkpoint_of_another_model_type_or_not_a_checkpoint_is_named_as_such(tiny_checkpoint, tmp_path):
    with pytest.raises(SamCheckpointError) as err:
        load_sam("vit_b", tiny_checkpoint)
    assert "looks like a tiny checkpoint" in str(err.value) and "vit_b" in str(err.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(SamCheckpointError, match="could not be read"):
        load_sam("tiny", str(junk))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(SamCheckpointError, match="is not a SAM checkpoint"):
        load_sam("vit_l", str(tmp_path / "other.pth"))


def test_tiny_checkpoint_loads_through_the_real_path_with_its_weights(tiny_checkpoint):
    sam = load_sam("tiny", tiny_checkpoint)
    saved = torch.load(tiny_checkpoint, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in sam.state_dict().items())


# -- the SAM backend ------------------------------------------------------------------------
def test_sam_backend_end_to_end_through_the_service(redis_server, replay_factory, tiny_checkpoint, one_thread):
    replay = replay_factory()
    rng = np.random.default_rng(0)
    chunks = [square_chunk(rng, steps=4, size=64), square_chunk(rng, steps=4, size=64, first_step=4),
              square_chunk(rng, steps=4, size=64, episode="ep-1")]
    ids = [replay.insert(chunk, segment=True) for chunk in chunks]
    config = SegmenterConfig(backend="sam", batch_frames=64, max_wait_ms=50, poll_ms=50, device="cpu",
                             sam=SamConfig(sam_checkpoint=tiny_checkpoint, sam_model_type="tiny",
                                           sam_points_per_side=4, sam_encoder_batch=4))
    seg = SegmenterService(config, redis_server.url, replay.config, metrics=Metrics("prometheus"))
    summary = seg.run(max_seconds=120, stop_when_idle=True)

    assert summary["chunks"] == 3 and summary["backend"] == "sam"
    for chunk_id, chunk in zip(ids, chunks):
        raw = replay.redis.get(replay.keys.mask(chunk_id))
        assert len(raw) == chunk.masks.size  # uint8 (T+1, H, W) at the frame size
        assert set(np.unique(np.frombuffer(raw, np.uint8))) <= {0, 1}
    # ep-0's second chunk starts on the frame where its first chunk ended: found once, reused
    assert summary["sam_continued_frames"] == 1
    assert sum(v for k, v in summary.items() if k.startswith("sam_")) == 3 * 5


def test_sam_prompts_each_frame_with_a_box_around_the_previous_mask(tiny_checkpoint):
    backend = SamBackend(SamConfig(sam_checkpoint=tiny_checkpoint, sam_model_type="tiny", sam_box_margin=0.1),
                         torch.device("cpu"))
    boxes, bootstraps = [], []
    agent = np.zeros((32, 32), np.uint8)
    agent[12:20, 10:22] = 1

    def bootstrap(frame, features):
        bootstraps.append(frame)
        return agent

    def decode(features, frame_size, box=None, point=None):
        boxes.append(box)
        cy, cx = int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2) + 1  # the agent moved right
        found = np.zeros(frame_size, np.uint8)
        found[cy - 4:cy + 4, cx - 6:cx + 6] = 1
        return found[None], np.ones(1, np.float32)
    backend._bootstrap, backend._decode = bootstrap, decode
    rng = np.random.default_rng(0)
    first, second = square_chunk(rng, steps=4), square_chunk(rng, steps=4, first_step=4)
    (masks_first,) = backend.segment([first])
    (masks_second,) = backend.segment([second])

    assert len(bootstraps) == 1  # only the episode's first frame
    np.testing.assert_array_equal(masks_first[0], agent)
    for t in range(1, 5):
        np.testing.assert_allclose(boxes[t - 1], propagate_box(masks_first[t - 1], 0.1))
    np.testing.assert_array_equal(masks_second[0], masks_first[-1])  # the same frame, carried over
    np.testing.assert_allclose(boxes[4], propagate_box(masks_second[0], 0.1))
    assert backend.report() == {"sam_propagated_frames": 8.0, "sam_continued_frames": 1.0}


def test_sam_bootstraps_again_when_the_propagated_mask_is_implausible(tiny_checkpoint):
    backend = SamBackend(SamConfig(sam_checkpoint=tiny_checkpoint, sam_model_type="tiny"), torch.device("cpu"))
    agent = np.zeros((32, 32), np.uint8)
    agent[12:20, 10:22] = 1
    calls = []
    backend._bootstrap = lambda frame, features: calls.append("bootstrap") or agent
    backend._decode = lambda *a, **k: (np.ones((1, 32, 32), np.uint8), np.ones(1))  # "everything": the sky
    (masks,) = backend.segment([square_chunk(np.random.default_rng(0), steps=3)])
    assert calls == ["bootstrap"] * 4 and (masks == agent).all()


# -- the student ----------------------------------------------------------------------------
def test_student_learns_a_synthetic_mask_then_serves_it(one_thread):
    config = StudentConfig(student_train_frames=640, student_serve_iou=0.75, student_audit_fraction=0.0,
                           student_passes=1.0)
    student = StudentBackend(config, OracleBackend(), torch.device("cpu"), seed=0)
    rng = np.random.default_rng(1)
    for _ in range(40):
        batch = [square_chunk(rng, steps=31), square_chunk(rng, steps=31)]
        served = student.segment(batch)
        if not student.serving:  # still learning: the teacher's masks are served
            assert all((s == c.masks).all() for s, c in zip(served, batch))
        else:
            break
    assert student.serving and student.teacher_iou >= 0.75
    held_out = [square_chunk(np.random.default_rng(99), steps=63, episode="held-out")]
    served = student.segment(held_out)[0]
    assert mask_iou(served, held_out[0].masks).mean() > 0.8
    report = student.report()
    assert 1e5 < report["student_parameters"] < 1e6 and report["student_serving"] == 1.0


def test_student_ignores_frames_where_the_teacher_had_no_mask_information(one_thread):
    student = StudentBackend(StudentConfig(), OracleBackend(), torch.device("cpu"))
    chunk = square_chunk(np.random.default_rng(0), steps=3)
    student.learn(chunk.frames, np.ones_like(chunk.masks))  # all ones: SAM found nothing
    assert student.trained_frames == 0 and student.buffer.size == 0 and not student.recent_iou
    student.learn(chunk.frames, chunk.masks)
    assert student.trained_frames == 4 and student.buffer.size == 4
