"""Classifier heads, a registry keyed by the ``kind`` in a model card's ``model.head`` entry.

``linear`` is ``nn.Linear``; ``knn`` is :class:`KNNHead`; ``cosine`` is CLIP's normalised-feature head
(``dlbench.models.clip.CosineHead``: zero-shot heads and the fine-tunes that start from them).
A head module may define ``spec()`` (the card entry it is rebuilt from); ``head_spec`` falls back to
``{"kind": "linear"}``.

``KNNHead`` makes a kNN classifier a model like any other: its memory bank (l2-normalised
train features) and labels are buffers saved in safetensors, and its output is the log of
the temperature-weighted vote distribution (Wu et al. 2018), so the evaluate path computes
accuracy, NLL, ECE and Brier from it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.registry import Registry


def knn_vote_probs(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                   k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Cosine kNN with exp(sim / T) weighted votes; returns class probabilities N x num_classes.

    ``bank`` must already be l2-normalised; ``query`` is normalised here.
    """
    query = F.normalize(query.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for i in range(0, len(query), chunk):
        sim = query[i:i + chunk] @ bank.T
        top, idx = sim.topk(k, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out) if out else torch.empty(0, num_classes)


class KNNHead(nn.Module):
    """Weighted kNN over a stored bank; ``forward`` returns log-probabilities (the model's logits)."""

    def __init__(self, dim: int, bank_size: int, num_classes: int, k: int = 20, temperature: float = 0.07) -> None:
        super().__init__()
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.register_buffer("bank", torch.zeros(bank_size, dim))
        self.register_buffer("bank_labels", torch.zeros(bank_size, dtype=torch.int64))

    @classmethod
    def from_features(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 20,
                      temperature: float = 0.07) -> "KNNHead":
        head = cls(features.shape[1], features.shape[0], num_classes, k, temperature)
        head.bank.copy_(F.normalize(features.float(), dim=1))
        head.bank_labels.copy_(labels.long())
        return head

    def spec(self) -> dict[str, Any]:
        return {"kind": "knn", "k": self.k, "temperature": self.temperature, "bank_size": int(self.bank.shape[0])}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        probs = knn_vote_probs(features, self.bank, self.bank_labels, self.num_classes, self.k, self.temperature)
        return probs.clamp_min(1e-6).log()


HeadBuilder = Callable[[dict[str, Any], int, int], nn.Module]  # (spec, feature dim, classes) -> head
HEADS: Registry[HeadBuilder] = Registry("head kind")
HEADS.add("linear", lambda spec, dim, num_classes: nn.Linear(dim, num_classes))
HEADS.add("knn", lambda spec, dim, num_classes: KNNHead(dim, int(spec["bank_size"]), num_classes, int(spec["k"]),
                                                         float(spec["temperature"])))
HEADS.add("cosine", lambda spec, dim, num_classes: _cosine_head(dim, num_classes))


def _cosine_head(dim: int, num_classes: int) -> nn.Module:
    from dlbench.models.clip import CosineHead

    return CosineHead(dim, num_classes)


def build_head(spec: dict[str, Any] | None, dim: int, num_classes: int) -> nn.Module:
    """The head a card's ``model.head`` entry describes (default: linear)."""
    spec = spec or {"kind": "linear"}
    return HEADS.get(spec.get("kind", "linear"))(spec, dim, num_classes)


def head_spec(head: nn.Module) -> dict[str, Any]:
    """The card entry of a live head: its own ``spec()``, or linear for ``nn.Linear``."""
    if hasattr(head, "spec"):
        return head.spec()
    if isinstance(head, nn.Linear):
        return {"kind": "linear"}
    raise TypeError(f"head {type(head).__name__} has no spec(); register it in dlbench.models.heads.HEADS")
