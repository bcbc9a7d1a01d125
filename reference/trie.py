"""Prefix-to-Tree (P2T): the prefix tree of one group's responses, in exact arithmetic.

Each node is a prefix s of some response in the group. It keeps |Members(s)| (the responses
that start with s), the exact sum of their rewards, how many responses end exactly at s, and
its children by next token. V(s) = reward_sum / count is a `Fraction`, so identities such as
"TD is 0 at non-branch tokens" and telescoping hold exactly (proofs_notes/tempo.md).

Building costs O(total tokens) dict operations per group; no torch is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Sequence


@dataclass(eq=False)
class Node:
    """One prefix s of the group's tree."""

    depth: int  # |s|
    count: int = 0  # |Members(s)|
    reward_sum: Fraction = Fraction(0)  # sum of R_k over Members(s)
    ends: int = 0  # members with n_k == |s|: "end of response" acts as one more child
    children: dict[int, Node] = field(default_factory=dict)

    @property
    def value(self) -> Fraction:
        """V(s): mean reward of the responses through s."""
        return self.reward_sum / self.count

    @property
    def n_continuations(self) -> int:
        """Distinct next tokens, plus one if some member response ends here."""
        return len(self.children) + (1 if self.ends else 0)

    @property
    def is_branch(self) -> bool:
        """A branch node: its members do not all continue with the same token."""
        return self.n_continuations > 1


class PrefixTree:
    """The P2T tree of one group.

    Args:
        sequences: G token sequences, y_k = responses[k, :n_k] (any lengths, including 0).
        rewards: G rewards; floats convert to `Fraction` exactly.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], rewards: Sequence[float | Fraction]):
        if len(sequences) != len(rewards):
            raise ValueError(f"got {len(sequences)} sequences but {len(rewards)} rewards")
        self.sequences: list[tuple[int, ...]] = [tuple(s) for s in sequences]
        self.rewards: list[Fraction] = [Fraction(r) for r in rewards]
        self.root = Node(depth=0)
        for seq, reward in zip(self.sequences, self.rewards):
            self._insert(seq, reward)

    def _insert(self, seq: tuple[int, ...], reward: Fraction) -> None:
        node = self.root
        node.count += 1
        node.reward_sum += reward
        for token in seq:
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = Node(depth=node.depth + 1)
            child.count += 1
            child.reward_sum += reward
            node = child
        node.ends += 1

    def __len__(self) -> int:
        return len(self.sequences)

    def node(self, prefix: Sequence[int]) -> Node:
        """The node of `prefix`; KeyError if no response of the group starts with it."""
        node = self.root
        for token in prefix:
            node = node.children[token]
        return node

    def path(self, i: int) -> list[Node]:
        """Nodes along response i: [root, y_i[:1], ..., y_i[:n_i]] (n_i + 1 nodes)."""
        nodes = [self.root]
        for token in self.sequences[i]:
            nodes.append(nodes[-1].children[token])
        return nodes

    def nodes(self) -> Iterator[Node]:
        """Every node, depth first (iterative: responses can be thousands of tokens deep)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def td(self, i: int) -> list[Fraction]:
        """TD[i, t] = V(y_i[:t+1]) - V(y_i[:t]) for t < n_i, exact.

        Where the child has as many members as the parent the members are the same set, so
        the difference is exactly 0 (proofs_notes/tempo.md, Proposition 1).
        """
        path = self.path(i)
        return [child.value - parent.value for parent, child in zip(path, path[1:])]

    def is_branch_token(self, i: int) -> list[bool]:
        """Token t of response i is a branch token when Members(child) != Members(parent)."""
        path = self.path(i)
        return [child.count != parent.count for parent, child in zip(path, path[1:])]
