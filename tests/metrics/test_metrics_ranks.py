"""FID/KID/PR scored by several processes together (each a slice of the generated images, features
gathered, figures computed once): the same numbers as one process, to the last bit."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from cartoon_stylegan.metrics import GeneratorDataset, Ranks, TensorImageDataset, compute_metrics

N, BATCH = 20, 8  # 3 batches: 8, 8, 4


def _data():
    from cartoon_stylegan.networks import Generator

    torch.manual_seed(0)
    G = Generator(16, style_dim=32, n_mlp=2, channel_max=16).eval()
    g = torch.Generator().manual_seed(5)
    real = (torch.rand(16, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    return GeneratorDataset(G, N, seed=3, batch=BATCH), TensorImageDataset(real)


def _score(ranks=None, cache=None):
    fake, real = _data()
    return compute_metrics(fake, real, kid_subset_size=8, kid_subsets=10, batch_size=BATCH, progress=False,
                           cache_dir=cache, real_cache_key="r" if cache else None, ranks=ranks)


def _rank(rank, world, init, out_dir, cache):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        def gather(obj):
            got = [None] * world
            dist.all_gather_object(got, obj)
            return got
        result = _score(Ranks(rank, world, gather), cache)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_part_is_whole_batches_in_order_covering_every_image():
    for world in (1, 2, 3, 4, 5):
        parts = [Ranks(r, world, None).part(N, BATCH) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(N)), world  # disjoint, in order, all of them
        assert all(p.start % BATCH == 0 for p in parts if len(p)), world  # each starts on a batch
    assert [Ranks(r, 2, None).part(N, BATCH) for r in range(2)] == [range(0, 8), range(8, 20)]


@pytest.mark.parametrize("world", [4])  # 4 ranks for 3 batches: uneven, and one rank has none
def test_split_across_processes_gives_the_one_process_figures(tmp_path, world):
    alone = _score()
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_rank, args=(world, init, str(tmp_path), str(tmp_path / "cache")), nprocs=world,
                       join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert all(r == alone for r in results), (alone, results)  # every rank, every figure, exactly
    assert alone["n_fake"] == N and {"fid", "kid_mean", "precision", "recall"} <= set(alone)
    assert list((tmp_path / "cache").glob("real-r-*")), "rank 0 cached the real side's features"
