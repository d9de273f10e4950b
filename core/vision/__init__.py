"""hybrid_mllm.core.vision: image and video preprocessing for the vision encoder.

Images: `load_image` (safe loading, EXIF orientation, RGB) -> `select_grid` + `anyres_tiles`
(LLaVA-NeXT anyres: thumbnail + tiles) -> encoder -> `tiles_to_grid` + `unpad_features`;
`num_visual_tokens` predicts the token count up front. Videos: `load_video` samples frames,
normalised into a `VideoClip`.
"""

from .anyres import (
                     AnyresTiles,
                     anyres_tiles,
                     num_visual_tokens,
                     select_grid,
                     single_view,
                     tiles_to_grid,
                     unpad_features,
)
from .image import (
                     CLIP_MEAN,
                     CLIP_STD,
                     DEFAULT_MAX_PIXELS,
                     IMAGENET_MEAN,
                     IMAGENET_STD,
                     SIGLIP_MEAN,
                     SIGLIP_STD,
                     ImageError,
                     load_image,
                     normalize,
                     to_tensor,
)
from .video import VideoClip, VideoError, VideoFrames, load_video

Visual = AnyresTiles | VideoClip  # one image or video, ready for the encoder

__all__ = ["AnyresTiles", "CLIP_MEAN", "CLIP_STD", "DEFAULT_MAX_PIXELS", "IMAGENET_MEAN", "IMAGENET_STD",
           "ImageError", "SIGLIP_MEAN", "SIGLIP_STD", "VideoClip", "VideoError", "VideoFrames", "Visual", "anyres_tiles", "load_image",
           "load_video", "normalize", "num_visual_tokens", "select_grid", "single_view", "tiles_to_grid",
           "to_tensor", "unpad_features"]
