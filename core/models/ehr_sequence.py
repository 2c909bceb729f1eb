"""Time-aware sequence encoder over timeline events at or before the index time.

Each event becomes one token: ``code embedding + value embedding + time embedding``.

* code: vocabulary of the most frequent codes in the training split's pre-index
  events (``PAD`` = 0, ``UNK`` = 1 for unseen codes);
* value: the numeric value standardised per code with training-split statistics
  (clipped to +-5) and a missing flag (codes without values are common; an
  ``UNK`` code's value is read as missing: it has no statistics); with
  ``log_skewed``, a code whose training values are strongly right-skewed and
  non-negative (BNP, creatinine) is read as ``log1p`` first, as the tabular
  features are (``core.models.ehr_tabular.is_skewed``);
* time: time since the event, ``log1p(days before index)``, through sinusoidal
  features and a linear layer -- irregular, sparse sampling is encoded directly
  rather than binned.

Only the last ``max_events`` events before the index time are kept (most recent
last). One transformer encoder layer contextualises the tokens; a learned
``null`` key is always present so subjects with no events give no NaN.
``EventVocabulary`` is fitted on the training split and stored in config.json.

The event tokens are multiplied by a learned scalar gate that starts at 0.1
(ReZero style): on the demo cohort the 64 randomly embedded event tokens made
the EHR models overfit before they used the tabular features (ehr_only test C
0.517 with the gate open from the start; see docs/BENCHMARKS.md). The gate
opens as far as the events help on training data. It does not start at exactly
0 so that event attributions exist from the first optimiser step.
Events after the index time never reach this module: ``Cohort.events`` drops them
and ``EventVocabulary.encode`` drops them again from the index time it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from core.models.ehr_tabular import is_skewed, log_scale

PAD, UNK = 0, 1
GATE_INIT = 0.1  # event tokens enter through a learned gate that starts nearly closed (see the module docstring)


@dataclass
class EventVocabulary:
    codes: list[str]
    value_mean: list[float]
    value_std: list[float]
    max_events: int = 64
    log: list[str] = field(default_factory=list)  # codes whose values are read as log1p(max(x, 0))

    @classmethod
    def fit(cls, events: list[pd.DataFrame], max_codes: int = 512, max_events: int = 64, *,
            log_skewed: bool = False) -> EventVocabulary:
        frames = [e for e in events if len(e)]
        if not frames:
            return cls([], [], [], max_events)
        allev = pd.concat(frames, ignore_index=True)
        counts = allev["code"].value_counts()
        codes = [str(c) for c in counts.index[:max_codes]]
        log: list[str] = []
        if log_skewed:
            values = allev[["code", "numeric_value"]].dropna()
            skewed = {str(c) for c, v in values.groupby("code")["numeric_value"] if is_skewed(v.to_numpy(np.float64))}
            log = [c for c in codes if c in skewed]  # vocabulary order
            if log:
                allev = allev.copy()
                rows = allev["code"].astype(str).isin(set(log))
                allev.loc[rows, "numeric_value"] = log_scale(allev.loc[rows, "numeric_value"].to_numpy(np.float64))
        stats = allev.groupby("code")["numeric_value"].agg(["mean", "std"])
        mean = [float(stats.loc[c, "mean"]) if c in stats.index and np.isfinite(stats.loc[c, "mean"]) else 0.0 for c in codes]
        std = [float(stats.loc[c, "std"]) if c in stats.index and np.isfinite(stats.loc[c, "std"]) and stats.loc[c, "std"] > 1e-8 else 1.0 for c in codes]
        return cls(codes, mean, std, max_events, log)

    @property
    def size(self) -> int:
        return len(self.codes) + 2

    def encode(self, events: pd.DataFrame, index_time: pd.Timestamp | None) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
        """Arrays of length ``max_events`` (left-aligned, padded) and the kept events (same order)."""
        k = self.max_events
        ev = events
        if index_time is not None and len(ev):
            ev = ev[ev["time"] <= index_time]
        ev = ev.sort_values("time", kind="stable").tail(k).reset_index(drop=True)
        n = len(ev)
        lookup = {c: i + 2 for i, c in enumerate(self.codes)}
        codes = np.zeros(k, np.int64)
        values = np.zeros(k, np.float32)
        vmiss = np.ones(k, np.float32)
        dt = np.zeros(k, np.float32)
        mask = np.zeros(k, np.float32)
        if n:
            idx = np.array([lookup.get(str(c), UNK) for c in ev["code"]], np.int64)
            codes[:n] = idx
            raw = ev["numeric_value"].to_numpy(np.float64)
            if self.log:
                logged = ev["code"].astype(str).isin(set(self.log)).to_numpy()
                raw = np.where(logged, log_scale(raw), raw)
            mean = np.array([0.0, 0.0] + self.value_mean)[idx]
            std = np.array([1.0, 1.0] + self.value_std)[idx]
            # an unknown code has no value statistics: its number is read as missing, not raw (140 mmol/L read as
            # 140 SDs, clipped to 5, told the network nothing it learned)
            ok = np.isfinite(raw) & (idx != UNK)
            values[:n] = np.clip(np.where(ok, (raw - mean) / std, 0.0), -5, 5)
            vmiss[:n] = (~ok).astype(np.float32)
            ref = index_time if index_time is not None else ev["time"].max()
            days = (ref - ev["time"]).dt.total_seconds().to_numpy() / 86400.0
            dt[:n] = np.maximum(days, 0.0)
            mask[:n] = 1.0
        return {"codes": codes, "values": values, "value_missing": vmiss, "dt_days": dt, "event_mask": mask}, ev

    def to_json(self) -> dict:
        out = {"codes": self.codes, "value_mean": self.value_mean, "value_std": self.value_std, "max_events": self.max_events}
        if self.log:  # stored only when used: older model folders read as before
            out["log"] = self.log
        return out

    @classmethod
    def from_json(cls, d: dict) -> EventVocabulary:
        return cls(list(d["codes"]), list(d["value_mean"]), list(d["value_std"]), int(d["max_events"]), list(d.get("log", [])))


class TimeEmbedding(nn.Module):
    """``log1p(days)`` -> sinusoidal features at fixed frequencies -> linear ``d``."""

    def __init__(self, dim: int, n_freq: int = 8) -> None:
        super().__init__()
        self.register_buffer("freq", torch.exp(torch.linspace(math.log(0.25), math.log(8.0), n_freq)), persistent=False)
        self.linear = nn.Linear(2 * n_freq + 1, dim)

    def forward(self, dt_days: torch.Tensor) -> torch.Tensor:
        t = torch.log1p(dt_days.clamp_min(0)).unsqueeze(-1)
        ang = t * self.freq
        return self.linear(torch.cat([torch.sin(ang), torch.cos(ang), t / 10], dim=-1))


class SequenceEncoder(nn.Module):
    """Event tokens ``[B, E, d]`` from codes, values and times (see the module docstring).

    >>> enc = SequenceEncoder(10, 8)
    >>> b = {"codes": torch.ones(2, 4, dtype=torch.long), "values": torch.zeros(2, 4), "value_missing": torch.ones(2, 4),
    ...      "dt_days": torch.ones(2, 4), "event_mask": torch.tensor([[1., 1, 0, 0], [0, 0, 0, 0]])}
    >>> enc(b).shape
    torch.Size([2, 4, 8])
    """

    def __init__(self, vocab_size: int, dim: int, layers: int = 1, heads: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.code = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.value = nn.Sequential(nn.Linear(2, dim), nn.GELU(), nn.Linear(dim, dim))
        self.time = TimeEmbedding(dim)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers > 0 else None
        # residual gate on the event tokens (starts at GATE_INIT): the tabular features carry the risk first
        self.gate = nn.Parameter(torch.full((1,), GATE_INIT))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # model folders saved before the gate existed had the events fully open: gate = 1
        state_dict.setdefault(prefix + "gate", torch.ones(1))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        vals = torch.stack([batch["values"], batch["value_missing"]], dim=-1)
        tok = self.code(batch["codes"]) + self.value(vals) + self.time(batch["dt_days"])
        if self.encoder is None:
            return self.gate * tok
        b = tok.shape[0]
        seq = torch.cat([self.null.expand(b, 1, -1), tok], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=tok.device), batch["event_mask"] < 0.5], dim=1)
        return self.gate * self.encoder(seq, src_key_padding_mask=pad)[:, 1:]
