"""torchrun with 2 CPU processes (gloo): ranks end with identical parameters (marker slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from batchcraft.data.text import ByteBatches, ByteCorpus
    from batchcraft.models.lact_config import lact_tiny
    from batchcraft.models.lact_lm import LaCTForCausalLM
    from batchcraft.recipes.dist import init_distributed
    from batchcraft.recipes.lm import LMTrainSettings, train_lm

    torch.set_num_threads(1)
    d = init_distributed("cpu")
    rank, world = d.rank, d.world_size
    assert world == 2
    torch.manual_seed(100 + rank)  # different init per rank: DDP must broadcast rank 0's
    cfg = lact_tiny(hidden_size=64, num_heads=2, num_attn_heads=4, chunk_size=8, window_size=8,
                    low_rank=4, mlp_hidden=96)
    model = LaCTForCausalLM(cfg)
    data = torch.randint(97, 123, (3000,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)
    corpus = ByteCorpus(data=data, doc_starts=torch.tensor([0]), files=[])
    s = LMTrainSettings(steps=3, batch_size=2, context=16, warmup=1)
    train_lm(model, ByteBatches(corpus, batch_size=2, context=16), s)
    from safetensors.torch import save_file
    save_file(model.state_dict(), f"{sys.argv[1]}/rank{rank}.safetensors")
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_identical_parameters(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", str(script), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "rank0.safetensors")
    b = load_file(tmp_path / "rank1.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
