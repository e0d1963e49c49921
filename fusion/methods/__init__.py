"""Fusion methods, one file each: static (SE-add), dynmm (gated dynamic fusion)."""
