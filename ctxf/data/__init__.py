"""Training data: webdataset shards -> batches (`loader.ShardLoader`); the sample format (`format`).

Modules are imported by name (`from ctxf.data.loader import ShardLoader`): `ctxf.config` imports
`ctxf.data.config`, so this package must not import modules that import `ctxf.config`.
"""
