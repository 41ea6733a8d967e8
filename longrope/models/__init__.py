"""Models: where a `--model` argument points and how it is loaded.

cache.py: the cache folder and its lock. device.py: device and dtype policy. presets.py: the
`tiny` and `smollm2-135m` presets, built once into the cache. load.py: `load_model` (preset,
HF directory or .gguf) and `load_config` (the config only, no weights).
"""
