"""The Segment Anything backend: zero-shot agent masks, prompted automatically.

Frames are upscaled as SAM expects (longest side to the model's `img_size`, SAM's own
`ResizeLongestSide`), encoded in sub-batches (the image encoder is nearly all the cost),
then decoded frame by frame in episode order with the prompts chosen by
`sam_prompting` (propagated box, bootstrapped by automatic mask generation plus a
selection rule). Masks are returned at the chunk's frame size as uint8 {0, 1}. A frame
where nothing plausible is found is served as all ones: "no mask information", as a
dropped mask is (see segmenter.imperfection).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.transforms import ResizeLongestSide

from common.codec import Chunk
from common.config import at_least, in_range, require
from segmenter.backends.sam_models import CHECKPOINTS_URL, load_sam
from segmenter.backends.sam_prompting import EpisodeMemory, plausible, propagate_box, select_agent_mask


@dataclass
class SamConfig:
    """Segment Anything: which model, and how it is prompted."""

    sam_checkpoint: str | None = field(default=None, metadata={
        "help": f"SAM checkpoint file matching --segmenter.sam-model-type (from {CHECKPOINTS_URL})"})
    sam_model_type: Literal["vit_b", "vit_l", "vit_h", "tiny"] = field(default="vit_b", metadata={
        "help": "SAM image encoder; 'tiny' is the random-weight test model"})
    sam_encoder_batch: int = field(default=8, metadata={"help": "frames per image-encoder call (GPU memory)"})
    sam_box_margin: float = field(default=0.15, metadata={
        "help": "the propagated box grows by this fraction of its size (+2 px) per side"})
    sam_points_per_side: int = field(default=16, metadata={"help": "point grid of the bootstrap mask generator"})
    sam_pred_iou_thresh: float = field(default=0.7, metadata={"help": "bootstrap generator's predicted-IoU filter"})
    sam_stability_thresh: float = field(default=0.85, metadata={"help": "bootstrap generator's stability filter"})
    sam_min_area: float = field(default=0.003, metadata={"help": "smallest plausible agent mask (frame fraction)"})
    sam_max_area: float = field(default=0.4, metadata={"help": "largest plausible agent mask (frame fraction)"})

    def validate(self) -> None:
        at_least(self, 1, "sam_encoder_batch", "sam_points_per_side")
        at_least(self, 0, "sam_box_margin")
        for name in ("sam_pred_iou_thresh", "sam_stability_thresh", "sam_min_area", "sam_max_area"):
            in_range(self, name, 0.0, 1.0)
        require(self.sam_min_area <= self.sam_max_area, "sam_min_area", f"is above --segmenter.sam-max-area "
                f"{self.sam_max_area}", "pass a smallest area below the largest")


class SamBackend:
    name = "sam"

    def __init__(self, config: SamConfig, device: torch.device):
        self.config = config
        self.device = device
        self.model = load_sam(config.sam_model_type, config.sam_checkpoint).to(device).eval()
        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)
        self.generator = SamAutomaticMaskGenerator(
            self.model, points_per_side=config.sam_points_per_side, pred_iou_thresh=config.sam_pred_iou_thresh,
            stability_score_thresh=config.sam_stability_thresh, output_mode="binary_mask")
        self.memory = EpisodeMemory()
        self.frames = Counter()  # how each frame's mask was found

    @torch.inference_mode()
    def segment(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        return [self._segment_chunk(chunk) for chunk in chunks]

    def report(self) -> dict[str, float]:
        return {f"sam_{how}_frames": float(n) for how, n in self.frames.items()}

    def _segment_chunk(self, chunk: Chunk) -> np.ndarray:
        features = self._encode(chunk.frames)
        masks: list[np.ndarray] = []
        carried = self.memory.get(chunk.episode_id, chunk.start_step)
        if carried is not None:  # this chunk's first frame is the previous chunk's last
            masks.append(carried)
            self.frames["continued"] += 1
        for t in range(len(masks), len(chunk.frames)):
            mask = self._propagate(features[t:t + 1], masks[-1]) if masks else None
            if mask is None:
                mask = self._bootstrap(chunk.frames[t], features[t:t + 1])
            else:
                self.frames["propagated"] += 1
            masks.append(mask)
        self.memory.put(chunk.episode_id, chunk.start_step + chunk.num_steps, masks[-1])
        return np.stack(masks)

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """Image embeddings (N, C, h, w) of uint8 frames (N, H, W, 3)."""
        out = []
        for i in range(0, len(frames), self.config.sam_encoder_batch):
            x = torch.tensor(frames[i:i + self.config.sam_encoder_batch], device=self.device)
            x = self.transform.apply_image_torch(x.permute(0, 3, 1, 2).float())
            out.append(self.model.image_encoder(self.model.preprocess(x)))
        return torch.cat(out)

    def _decode(self, features: torch.Tensor, frame_size: tuple[int, int], box: np.ndarray | None = None,
                point: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Masks (K, H, W) uint8 and SAM's predicted IoU (K,) for one prompt on one frame.

        A box is unambiguous (one mask); a single point is not, so it returns SAM's three.
        """
        boxes = points = None
        if box is not None:
            boxes = torch.as_tensor(self.transform.apply_boxes(box[None], frame_size), device=self.device)
        if point is not None:
            coords = torch.as_tensor(self.transform.apply_coords(point[None], frame_size), device=self.device)
            points = (coords[None].float(), torch.ones((1, 1), dtype=torch.int, device=self.device))
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, quality = self.model.mask_decoder(
            image_embeddings=features, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=box is None)
        input_size = self.transform.get_preprocess_shape(*frame_size, self.transform.target_length)
        masks = self.model.postprocess_masks(low_res, input_size, frame_size)[0] > self.model.mask_threshold
        return masks.cpu().numpy().astype(np.uint8), quality[0].float().cpu().numpy()

    def _propagate(self, features: torch.Tensor, previous: np.ndarray) -> np.ndarray | None:
        """The mask for a box around the previous frame's mask, or None if implausible."""
        box = propagate_box(previous, self.config.sam_box_margin)
        if box is None:
            return None
        mask = self._decode(features, previous.shape, box=box)[0][0]
        return mask if plausible(mask, self.config.sam_min_area, self.config.sam_max_area) else None

    def _bootstrap(self, frame: np.ndarray, features: torch.Tensor) -> np.ndarray:
        """Find the agent with no prompt: automatic masks + a centre click, then the selection rule."""
        h, w = frame.shape[:2]
        proposals = self.generator.generate(frame)
        candidates = [p["segmentation"].astype(np.uint8) for p in proposals]
        quality = [float(p["predicted_iou"]) for p in proposals]
        centre_masks, centre_quality = self._decode(features, (h, w), point=np.array([w / 2, h / 2], np.float32))
        candidates += list(centre_masks)
        quality += list(centre_quality)
        best = select_agent_mask(candidates, quality, self.config.sam_min_area, self.config.sam_max_area)
        if best is None:
            self.frames["unfound"] += 1
            return np.ones((h, w), dtype=np.uint8)
        self.frames["bootstrapped"] += 1
        return candidates[best]
