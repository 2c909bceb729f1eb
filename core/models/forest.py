"""An exported random survival forest: flat tree arrays in the model's safetensors, traversed with torch.

Training (``core.train.ehr.forest_member``) fits scikit-survival's ``RandomSurvivalForest`` and exports each
tree's arrays; nothing here imports scikit-survival, and nothing is unpickled: the arrays are buffers of this
module, saved and loaded with the rest of the network's state.

Layout (all trees concatenated, node ids global): ``left``/``right`` child ids (-1 at a leaf), ``feature`` (0 at
a leaf), ``threshold`` (float64, as scikit-learn stores it; a row goes left when its float32 value is <= the
threshold, as scikit-learn compares), ``roots`` (the first node of each tree), ``leaf_row`` (the leaf's row of
``leaf_survival``, -1 for an inner node) and ``leaf_survival`` ``[leaves, T]``: the leaf's Kaplan-Meier survival
read at the model's time grid (step function: the value at the last training time <= the grid point, 1 before
the first). The forest's curve is the mean of its trees' leaf curves, as scikit-survival's
``predict_survival_function`` averages them.

>>> f = SurvivalForest(n_nodes=3, n_trees=1, n_leaves=2, n_times=2)
>>> f.load_state_dict({"left": torch.tensor([1, -1, -1], dtype=torch.int32), "right": torch.tensor([2, -1, -1], dtype=torch.int32),
...     "feature": torch.zeros(3, dtype=torch.int32), "threshold": torch.full((3,), 0.5, dtype=torch.float64),
...     "roots": torch.zeros(1, dtype=torch.int64), "leaf_row": torch.tensor([-1, 0, 1], dtype=torch.int32),
...     "leaf_survival": torch.tensor([[1.0, 0.9], [1.0, 0.2]])})
<All keys matched successfully>
>>> f(torch.tensor([[0.0], [0.5], [1.0]]))[:, 1].tolist()  # x <= 0.5 goes left
[0.8999999761581421, 0.8999999761581421, 0.20000000298023224]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SurvivalForest(nn.Module):
    def __init__(self, n_nodes: int, n_trees: int, n_leaves: int, n_times: int) -> None:
        super().__init__()
        self.register_buffer("left", torch.full((n_nodes,), -1, dtype=torch.int32))
        self.register_buffer("right", torch.full((n_nodes,), -1, dtype=torch.int32))
        self.register_buffer("feature", torch.zeros(n_nodes, dtype=torch.int32))
        self.register_buffer("threshold", torch.zeros(n_nodes, dtype=torch.float64))
        self.register_buffer("roots", torch.zeros(n_trees, dtype=torch.int64))
        self.register_buffer("leaf_row", torch.full((n_nodes,), -1, dtype=torch.int32))
        self.register_buffer("leaf_survival", torch.ones(n_leaves, n_times))

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> SurvivalForest:
        return cls(int(d["nodes"]), int(d["trees"]), int(d["leaves"]), int(d["times"]))

    def leaves(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` inputs -> ``[B, trees]`` leaf node ids."""
        xd = x.detach().float().double()  # scikit-learn casts rows to float32 and compares with float64 thresholds
        node = self.roots.to(x.device).unsqueeze(0).expand(x.shape[0], -1).clone()
        left, right = self.left.long(), self.right.long()
        for _ in range(int(left.numel()) + 1):
            inner = left[node] >= 0
            if not bool(inner.any()):
                return node
            go_left = torch.gather(xd, 1, self.feature.long()[node]) <= self.threshold[node]
            node = torch.where(inner, torch.where(go_left, left[node], right[node]), node)
        raise RuntimeError("forest arrays have a cycle: re-train the model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` inputs -> ``[B, T]`` survival on the model's time grid (mean of the trees' leaf curves)."""
        rows = self.leaf_row.long()[self.leaves(x)]
        return self.leaf_survival[rows].mean(dim=1)
