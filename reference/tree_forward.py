"""The prefix trie of a batch of rows, in plain Python: the definition `fast/tree_forward_torch.pack`
must equal, and the per-row log-probs `tempo_rl.tree_logprobs` must equal.

A row's sequence is its prompt tokens where prompt_mask is 1, in order, then its completion up to its
last masked position. Each distinct prefix of a sequence is one node; its token is the prefix's last
token and its depth the prefix length minus one. Nodes are listed in depth-first preorder, children
in ascending token order, so every parent precedes its children.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TriePacking:
    tokens: list[int]  # token of each node
    depth: list[int]  # position of each node in its rows
    parent: list[int]  # parent node, -1 for a root
    completion_node: list[list[int]]  # (B, T): node of each completion position, -1 past the row's end


def row_sequence(prompt: list[int], prompt_mask: list[int], completion: list[int], completion_mask: list[int]):
    """(sequence, prompt length) of one row."""
    p = [t for t, m in zip(prompt, prompt_mask) if m]
    n = max((j + 1 for j, m in enumerate(completion_mask) if m), default=0)
    return p + list(completion[:n]), len(p)


def pack_rows(prompt_ids, prompt_mask, completion_ids, completion_mask) -> TriePacking:
    """The trie of the batch; arguments are (B, P) and (B, T) nested lists of ints."""
    rows = [row_sequence(*r) for r in zip(prompt_ids, prompt_mask, completion_ids, completion_mask)]
    root: dict = {}
    for seq, _ in rows:
        level = root
        for tok in seq:
            level = level.setdefault(tok, {})
    ids: dict[tuple[int, ...], int] = {}
    out = TriePacking([], [], [], [])

    def visit(level: dict, prefix: tuple[int, ...], parent: int) -> None:
        for tok in sorted(level):
            node = len(out.tokens)
            ids[prefix + (tok,)] = node
            out.tokens.append(tok)
            out.depth.append(len(prefix))
            out.parent.append(parent)
            visit(level[tok], prefix + (tok,), node)

    visit(root, (), -1)
    t = len(completion_ids[0]) if completion_ids else 0
    for seq, p in rows:
        out.completion_node.append([ids[tuple(seq[: p + j + 1])] if p + j < len(seq) else -1 for j in range(t)])
    return out


def row_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature: float = 1.0):
    """(B, T) log-probs from a forward of each row alone, unpadded; 0 where completion_mask is 0."""
    import torch

    b, t = completion_ids.shape
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
    rows = []
    for r in range(b):
        seq, p = row_sequence(
            prompt_ids[r].tolist(), prompt_mask[r].tolist(), completion_ids[r].tolist(), completion_mask[r].tolist()
        )
        n = len(seq) - p
        row = torch.zeros(t, dtype=dtype)
        if n:
            ids = torch.tensor([seq], dtype=torch.long, device=completion_ids.device)
            logits = model(input_ids=ids, use_cache=False).logits[0, p - 1 : p - 1 + n].to(dtype) / temperature
            lp = torch.log_softmax(logits, -1).gather(1, ids[0, p:, None])[:, 0]
            row = torch.cat([lp * completion_mask[r, :n].to(dtype), row[n:]])
        rows.append(row)
    return torch.stack(rows)


def tree_attention_ref(query, key, value, parent: list[int], *, scale: float):
    """Attention of each node over its ancestors and itself, dense: the definition `fast`'s
    `tree_attention` must equal. query: (H, N, D); key, value: (Hk, N, D), query head h reading key
    head h // (H / Hk); parent: (N,) parent node or -1, parents before children. Returns (N, H, Dv)."""
    import torch

    n = len(parent)
    visible = torch.zeros(n, n, dtype=torch.bool)  # (N, N) query node, key node
    for i, p in enumerate(parent):
        if p >= 0:
            visible[i] = visible[p]
        visible[i, i] = True
    groups = query.shape[0] // key.shape[0]
    k, v = key.repeat_interleave(groups, 0), value.repeat_interleave(groups, 0)  # (H, N, D)
    scores = (query @ k.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))  # (H, N, N)
    return (scores.softmax(-1) @ v).transpose(0, 1)
