"""Task models built from encoders + a fusion method + a head. Importing registers them."""
from fusion.models import rgbd  # noqa: F401
