"""Shapes of the tiny models the session fixtures (tests/conftest.py) build and convert."""

LLAMA = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96, rope_theta=50000.0,
             max_positions=512, rms_eps=1e-5)
LLAVA = dict(image_size=32, patch=8, vision_hidden=32, vision_layers=3, vision_heads=4,
             vision_intermediate=64, text_hidden=64, text_layers=2, heads=4, kv_heads=2,
             intermediate=96, rope_theta=10000.0, max_positions=512)
