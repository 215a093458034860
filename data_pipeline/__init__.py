"""Offline data tools: videos and a synthetic world -> webdataset tar shards for `ctxf.data`.

CLIs (each `python -m data_pipeline.<module> --help`):
- `videos_to_shards`: real videos + captions -> latents and caption embeddings in shards;
- `make_curtain`: the synthetic "curtain" memory world, train and held-out splits;
- `manifest`: check shards against their manifest (sizes, sha256, sample counts).

The sample format is described once, in `ctxf.data.format`. The curtain world is also a library
(`data_pipeline.curtain`: `make_clip`, `classify_identity`) for evaluation clips.
"""
