"""YAML presets shipped with the package (see ctxf.config.available_presets)."""
