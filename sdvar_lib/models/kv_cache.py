"""Static key/value cache with an explicit length, and block-causal chunk masks from stage ids.

One :class:`KVCache` serves every attention layer of one model for one batch: it is preallocated
to ``max_length`` tokens, a forward pass over a chunk writes the chunk's keys and values at
``[length, length + l)`` in every layer and then :meth:`KVCache.advance` moves the length;
rolling back is :meth:`KVCache.truncate`. Entries at or after ``length`` are never read, so a
rollback needs no copy of the old values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["KVCache", "stage_ids_for", "block_causal_mask", "block_causal_chunk_mask"]


def stage_ids_for(patch_nums: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Stage id of every token position, ``(L,)`` int64: ``[0, 1, 1, 1, 1, 2, ...]``."""
    ids = [si for si, pn in enumerate(patch_nums) for _ in range(pn * pn)]
    return torch.tensor(ids, dtype=torch.long, device=device)


def block_causal_mask(query_stage_ids: torch.Tensor, key_stage_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(l_q, l_k)`` mask, ``True`` where a query may attend: key stage <= query stage."""
    return key_stage_ids.unsqueeze(0) <= query_stage_ids.unsqueeze(1)


def block_causal_chunk_mask(stage_ids_L: torch.Tensor, start: int, l: int) -> torch.Tensor:
    """Boolean mask ``(l, start + l)`` of a chunk of ``l`` queries at ``[start, start + l)`` over the keys ``[0, start + l)``."""
    end = start + l
    return block_causal_mask(stage_ids_L[start:end], stage_ids_L[:end])


class KVCache:
    """Preallocated keys/values ``(num_layers, B, H, max_length, head_dim)`` with an explicit length."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        stage_ids_L: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if num_layers < 1 or batch_size < 1:
            raise ValueError(f"num_layers and batch_size must be >= 1, got {num_layers} and {batch_size}")
        max_length = int(stage_ids_L.numel())
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        self.k_NBHLc = torch.zeros(shape, dtype=dtype, device=device)
        self.v_NBHLc = torch.zeros(shape, dtype=dtype, device=device)
        self.stage_ids_L = stage_ids_L.to(device=self.k_NBHLc.device)
        self._stage_of_position = [int(s) for s in stage_ids_L.tolist()]
        self._length = 0
        self._pending = 0

    @property
    def length(self) -> int:
        """Number of valid positions ``[0, length)``."""
        return self._length

    @property
    def max_length(self) -> int:
        return self.k_NBHLc.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k_NBHLc.shape[1]

    @property
    def num_layers(self) -> int:
        return self.k_NBHLc.shape[0]

    def stages_held(self) -> int:
        """Number of complete stages whose inputs the cache holds."""
        if self._length == 0:
            return 0
        return self._stage_of_position[self._length - 1] + 1

    def write(self, layer: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a chunk's keys/values of one layer at ``[length, length + l)``.

        Returns views of the keys/values ``[0, length + l)`` for attention. The length itself moves
        only in :meth:`advance`, once every layer has written the chunk.
        """
        l = k_BHlc.shape[2]
        start, end = self._length, self._length + l
        if end > self.max_length:
            raise ValueError(f"chunk of {l} tokens at position {start} overflows the cache of {self.max_length}")
        if k_BHlc.shape[0] != self.batch_size:
            raise ValueError(f"chunk batch {k_BHlc.shape[0]} != cache batch {self.batch_size}")
        self.k_NBHLc[layer, :, :, start:end] = k_BHlc
        self.v_NBHLc[layer, :, :, start:end] = v_BHlc
        self._pending = l
        return self.k_NBHLc[layer, :, :, :end], self.v_NBHLc[layer, :, :, :end]

    def chunk_mask(self, l: int) -> torch.Tensor | None:
        """Block-causal mask of a chunk of ``l`` queries at ``[length, length + l)`` over ``[0, length + l)``.

        ``None`` when every query may see every key (the chunk is one stage), which lets attention
        take its unmasked kernel; the mask is still decided from stage ids.
        """
        start, end = self._length, self._length + l
        if end > self.max_length:
            raise ValueError(f"chunk of {l} tokens at position {start} overflows the cache of {self.max_length}")
        if l == 0 or self._stage_of_position[start] == self._stage_of_position[end - 1]:
            return None
        return block_causal_chunk_mask(self.stage_ids_L, start, l)

    def advance(self, l: int) -> None:
        """Make the chunk just written by every layer part of the cache."""
        if l != self._pending:
            raise ValueError(f"advance({l}) does not match the chunk of {self._pending} tokens just written")
        self._length += l
        self._pending = 0

    def truncate(self, length: int) -> None:
        """Roll back to the first ``length`` positions (must not grow the cache)."""
        if not 0 <= length <= self._length:
            raise ValueError(f"truncate length must be in [0, {self._length}], got {length}")
        self._length = length
        self._pending = 0

    def reset(self) -> None:
        self.truncate(0)

    def keys(self, layer: int) -> torch.Tensor:
        """Valid keys ``(B, H, length, head_dim)`` of one layer (a view)."""
        return self.k_NBHLc[layer, :, :, : self._length]

    def values(self, layer: int) -> torch.Tensor:
        return self.v_NBHLc[layer, :, :, : self._length]
