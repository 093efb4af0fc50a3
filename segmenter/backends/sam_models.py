"""Loading Segment Anything checkpoints, with errors that say what to do.

`vit_b`, `vit_l` and `vit_h` go through segment-anything's own
`sam_model_registry[model_type](checkpoint=path)`. Its builders hard-code the published
sizes, so the tests' model type `tiny` (the same classes at a few hundred thousand
parameters, with random weights: SAM weights cannot be downloaded in CI) is built here
from `TINY_SAM`. Before building, the checkpoint's image-encoder width is read (memory
mapped, weights only — nothing is unpickled) so that a checkpoint of another model type
is named as such instead of failing with a long list of tensor-size mismatches.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from common.cli import ConfigError

CHECKPOINTS_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
# Published file name and image-encoder width (embed_dim) of each model type.
PUBLISHED = {"vit_b": ("sam_vit_b_01ec64.pth", 768), "vit_l": ("sam_vit_l_0b3195.pth", 1024),
             "vit_h": ("sam_vit_h_4b8939.pth", 1280)}
_WIDTH_KEY = "image_encoder.patch_embed.proj.weight"


class SamCheckpointError(ConfigError):
    """A SAM checkpoint is missing, unreadable, or of another model type (the message says what to do)."""


@dataclass(frozen=True)
class TinySam:
    """Sizes of the test-only SAM (same architecture as the published ones, scaled down)."""

    img_size: int = 128
    patch_size: int = 16
    encoder_width: int = 32
    encoder_depth: int = 2
    encoder_heads: int = 2
    window_size: int = 4
    prompt_width: int = 32
    decoder_mlp: int = 64
    decoder_heads: int = 2


TINY_SAM = TinySam()


def build_tiny_sam(checkpoint: str | None = None, sizes: TinySam = TINY_SAM) -> Sam:
    """A tiny SAM from segment-anything's classes; loads `checkpoint` (a state dict) when given."""
    grid = sizes.img_size // sizes.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=sizes.img_size, patch_size=sizes.patch_size, embed_dim=sizes.encoder_width,
            depth=sizes.encoder_depth, num_heads=sizes.encoder_heads, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=(sizes.encoder_depth - 1,), window_size=sizes.window_size,
            out_chans=sizes.prompt_width),
        prompt_encoder=PromptEncoder(embed_dim=sizes.prompt_width, image_embedding_size=(grid, grid),
                                     input_image_size=(sizes.img_size, sizes.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=sizes.prompt_width, iou_head_depth=3,
            iou_head_hidden_dim=sizes.prompt_width,
            transformer=TwoWayTransformer(depth=2, embedding_dim=sizes.prompt_width, mlp_dim=sizes.decoder_mlp,
                                          num_heads=sizes.decoder_heads)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    sam.eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


BUILDERS: dict[str, Callable[..., Sam]] = {**{t: sam_model_registry[t] for t in PUBLISHED}, "tiny": build_tiny_sam}
WIDTHS = {**{t: width for t, (_, width) in PUBLISHED.items()}, "tiny": TINY_SAM.encoder_width}


def _explain(model_type: str) -> str:
    expected = f"the {PUBLISHED[model_type][0]} file" if model_type in PUBLISHED else "a checkpoint of this type"
    return (f"--segmenter.sam-model-type {model_type} needs {expected}; SAM checkpoints are published at "
            f"{CHECKPOINTS_URL} "
            "(vit_b: sam_vit_b_01ec64.pth, vit_l: sam_vit_l_0b3195.pth, vit_h: sam_vit_h_4b8939.pth)")


def _encoder_width(path: Path, model_type: str) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise SamCheckpointError(f"SAM checkpoint {path} could not be read as a PyTorch state dict "
                                 f"({type(exc).__name__}: {str(exc)[:200]}). {_explain(model_type)}") from exc
    if not isinstance(state, dict) or _WIDTH_KEY not in state:
        raise SamCheckpointError(f"{path} is not a SAM checkpoint (no {_WIDTH_KEY!r} tensor). "
                                 f"{_explain(model_type)}")
    return int(state[_WIDTH_KEY].shape[0])


def check_sam_checkpoint(model_type: str, checkpoint: str | None) -> Path:
    """The checkpoint's path if it is a readable SAM checkpoint of `model_type` (read lazily, so
    this is cheap); SamCheckpointError says what is wrong."""
    if model_type not in BUILDERS:
        raise SamCheckpointError(f"unknown SAM model type {model_type!r}; expected one of {sorted(BUILDERS)}")
    if not checkpoint:
        raise SamCheckpointError(f"the sam backend needs --segmenter.sam-checkpoint PATH. {_explain(model_type)}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint {path} does not exist. {_explain(model_type)}")
    width = _encoder_width(path, model_type)
    if width != WIDTHS[model_type]:
        actual = [t for t, w in WIDTHS.items() if w == width]
        looks = f"it looks like a {actual[0]} checkpoint" if actual else f"its image encoder is {width} wide"
        raise SamCheckpointError(f"SAM checkpoint {path} does not match --segmenter.sam-model-type {model_type} "
                                 f"(image encoder {WIDTHS[model_type]} wide): {looks}. {_explain(model_type)}")
    return path


def load_sam(model_type: str, checkpoint: str | None) -> Sam:
    """Build SAM of `model_type` with the weights in `checkpoint`; SamCheckpointError says what is wrong."""
    path = check_sam_checkpoint(model_type, checkpoint)
    try:
        return BUILDERS[model_type](checkpoint=str(path))
    except RuntimeError as exc:  # load_state_dict: same width, other layout
        raise SamCheckpointError(f"SAM checkpoint {path} does not fit model type {model_type}: "
                                 f"{str(exc)[:300]}. {_explain(model_type)}") from exc
