"""Task models built from encoders + a fusion method + a head. Importing registers them."""
from fusion.models import clip_adapted, clip_deq, clip_sparse, clips, rgbd  # noqa: F401
