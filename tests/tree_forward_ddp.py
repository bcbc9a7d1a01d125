"""One SGD step of a DistributedDataParallel-wrapped tiny Qwen2 on two gloo processes, each on its own
rows, through the tree forward; each rank saves its parameters (tests/test_tree_forward_models.py).

    python tests/tree_forward_ddp.py OUT

`expected_step` is the oracle: one step on the average of both ranks' per-row gradients, in one
process without DDP (DDP averages the ranks' gradients).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LR = 0.5  # large enough that the step moves every parameter by far more than float32 rounding
CASES = {"logprobs-unused": True, "logprobs": False, "policy_loss": False}  # case: find_unused_parameters
RANK_BATCHES = [
    (
        torch.tensor([[0, 1, 2], [0, 1, 2], [0, 3, 1]]),
        torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1]]),
        torch.tensor([[3, 4, 5], [3, 4, 7], [6, 4, 0]]),
        torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]]),
    ),
    (
        torch.tensor([[5, 3], [5, 3]]),
        torch.tensor([[1, 1], [1, 1]]),
        torch.tensor([[9, 8, 8, 2], [9, 8, 1, 0]]),
        torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]]),
    ),
]


def build_model():
    from tests.test_tree_forward import _model

    return _model("qwen2", seed=3).float()


def _targets(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, advantages), (B, T) float32, fixed per rank."""
    g = torch.Generator().manual_seed(rank)
    shape = RANK_BATCHES[rank][2].shape
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def tree_loss(case: str, model, rank: int) -> torch.Tensor:
    from tempo_rl import tree_logprobs, tree_policy_loss

    batch, (weights, adv) = RANK_BATCHES[rank], _targets(rank)
    if case == "policy_loss":
        return tree_policy_loss(model, *batch, None, adv)[0]
    return (weights * tree_logprobs(model, *batch)).sum()


def row_loss(case: str, model, rank: int) -> torch.Tensor:
    from tempo_rl.reference.tree_forward import row_logprobs
    from tests.test_tree_forward import _row_hidden_loss

    batch, (weights, adv) = RANK_BATCHES[rank], _targets(rank)
    if case == "policy_loss":  # old_logp None in the tree: the current log-probs, detached
        old = row_logprobs(model, *batch).detach()
        return _row_hidden_loss(model, batch, old, adv, None, "token-mean", 0.0)[0]
    return (weights * row_logprobs(model, *batch)).sum()


def expected_step(case: str) -> dict[str, torch.Tensor]:
    model = build_model()
    names, params = zip(*model.named_parameters())
    total = [torch.zeros_like(q) for q in params]
    for rank in range(len(RANK_BATCHES)):
        grads = torch.autograd.grad(row_loss(case, model, rank), params, materialize_grads=True)
        total = [t + g for t, g in zip(total, grads)]
    with torch.no_grad():
        return {n: q - LR * t / len(RANK_BATCHES) for n, q, t in zip(names, params, total)}


def worker(rank: int, out: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2)
    try:
        for case, find_unused in CASES.items():
            model = build_model()
            ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
            opt = torch.optim.SGD(ddp.parameters(), lr=LR)
            tree_loss(case, ddp, rank).backward()
            opt.step()
            torch.save({n: q.detach() for n, q in model.named_parameters()}, out / f"{case}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(Path(sys.argv[1]),), nprocs=len(RANK_BATCHES))
