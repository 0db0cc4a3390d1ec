"""Rank-local vLLM under torch.distributed, the parts that run without vLLM: 2 gloo processes get the
``external_launcher`` arguments, their environment and, with tensor parallelism over both, one pooled batch."""

import json
import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from stat_pl.engines.base import SamplingParams
from stat_pl.engines.vllm import VLLMSettings, pool_prompts, rank_local_launch
from stat_pl.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, tensor_parallel_size: int, out: str) -> None:
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(key, None)  # as under SLURM's launcher: vLLM's variables come from the process group
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    try:
        try:
            launch = rank_local_launch(VLLMSettings(tensor_parallel_size=tensor_parallel_size, seed=5))
        except UserError as e:
            with open(f"{out}.rank{rank}", "w") as f:
                json.dump({"error": str(e)}, f)
            return
        prompts = [[rank, k] for k in range(rank + 1)]  # rank 0: one prompt, rank 1: two
        pooled, sampling, mine = pool_prompts(prompts, SamplingParams(seed=100 + rank), launch.group)
        result = {
            "arguments": launch.arguments,
            "env": [os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")],
            "pooled": pooled,
            "seed": sampling.seed,
            "mine": pooled[mine],
        }
        with open(f"{out}.rank{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _launch(tmp_path, tensor_parallel_size: int) -> list[dict]:
    out = str(tmp_path / f"tp{tensor_parallel_size}")
    mp.spawn(_rank, args=(_free_port(), tensor_parallel_size, out), nprocs=2)
    return [json.loads(open(f"{out}.rank{r}").read()) for r in (0, 1)]


def test_each_rank_launches_its_own_engine_in_its_process(tmp_path):
    ranks = _launch(tmp_path, tensor_parallel_size=1)
    for rank, result in enumerate(ranks):
        assert result["arguments"] == {"distributed_executor_backend": "external_launcher", "seed": 5 + rank}
        assert result["env"] == [str(rank), "0", "2"]  # LOCAL_RANK: the rank's CUDA device, 0 on a CPU
        assert result["pooled"] == result["mine"] and len(result["mine"]) == rank + 1  # its own prompts only
        assert result["seed"] == 100 + rank


def test_a_tensor_parallel_group_pools_its_prompts_under_the_first_ranks_seed(tmp_path):
    ranks = _launch(tmp_path, tensor_parallel_size=2)
    for rank, result in enumerate(ranks):
        assert result["arguments"]["seed"] == 5  # one group: the engines sample alike
        assert result["pooled"] == [[0, 0], [1, 0], [1, 1]] and result["seed"] == 100
        assert result["mine"] == [[r, k] for r in [rank] for k in range(rank + 1)]


def test_outside_torch_distributed_nothing_changes_and_a_bad_group_size_is_named(tmp_path):
    assert rank_local_launch(VLLMSettings(tensor_parallel_size=4)).arguments == {}
    errors = [result["error"] for result in _launch(tmp_path, tensor_parallel_size=3)]
    assert errors == ["vllm.tensor_parallel_size=3 must divide the number of ranks, 2"] * 2
