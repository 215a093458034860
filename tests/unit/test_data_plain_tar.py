"""Acceptance 5: shards packed by the `tar` command from files named `<key>.<ext>` are readable."""

import json
import subprocess

import numpy as np
import torch
from safetensors.torch import save_file

from ctxf.data.loader import ShardLoader


def test_loader_reads_a_shard_made_by_the_tar_command(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for index in range(5):
        key = f"clip{index:03d}"
        latents = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
        text = rng.standard_normal((index + 1, 6)).astype(np.float32)
        if index % 2:  # both payload kinds the format allows: numpy and safetensors files
            np.save(files / f"{key}.latents.npy", latents)
            np.save(files / f"{key}.text.npy", text)
        else:
            save_file({"latents": torch.from_numpy(latents)}, str(files / f"{key}.latents.safetensors"))
            save_file({"text": torch.from_numpy(text)}, str(files / f"{key}.text.safetensors"))
        (files / f"{key}.json").write_text(json.dumps({"caption": f"clip number {index}"}))
        expected[key] = (latents, text)
    names = sorted(p.name for p in files.iterdir())  # members of a sample must be adjacent: sort by name
    shard = tmp_path / "handmade.tar"
    subprocess.run(["tar", "-cf", str(shard), "-C", str(files), *names], check=True)

    loader = ShardLoader(str(shard), batch_size=5, max_length=8, shuffle_buffer=0)
    (batch,) = list(loader)
    assert batch.keys == sorted(expected)
    assert loader.counters["corrupt_samples"] == 0
    for row, key in enumerate(batch.keys):
        latents, text = expected[key]
        assert np.array_equal(batch.latents[row].numpy(), latents)
        assert np.array_equal(batch.text[row, :len(text)].numpy(), text)
        assert not batch.text[row, len(text):].any()
        assert batch.text_lengths[row] == len(text)
        assert batch.meta[row]["caption"] == f"clip number {int(key[4:])}"
