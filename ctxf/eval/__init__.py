"""Evaluation of generated video: the curtain memory test (`curtain`) and weight-free consistency metrics."""
