"""Bit packing of integer codes (2-8 bits) into bytes or int32 words, and back.

Layout (little-endian bit stream, LSB first): code ``i`` occupies stream bits ``[i*b, (i+1)*b)`` with its
least significant bit first, and byte ``k`` holds stream bits ``8k .. 8k+7`` (bit ``8k+m`` is bit ``m``
of the byte). For 4-bit codes, byte ``k`` is ``codes[2k] | codes[2k+1] << 4``; a row-major
``[out, in]`` matrix with ``in * b`` a multiple of 8 therefore packs row by row into ``[out, in*b/8]``.
The int32 form is the same bytes read as little-endian words (zero-padded to a multiple of 4 bytes).
"""

from __future__ import annotations

import torch

from qdit.quant.primitives import check_bits


def packed_numel(numel: int, bits: int) -> int:
    """Bytes needed for ``numel`` codes of ``bits`` bits."""
    return (numel * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (any integer dtype, values in ``[0, 2^bits)``) into a flat ``uint8`` tensor."""
    check_bits(bits)
    flat = codes.detach().reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits} bits: [{int(flat.min())}, {int(flat.max())}]")
    flat = flat.to(torch.uint8)
    if bits == 8:
        return flat.clone()
    n = flat.numel()
    if 8 % bits == 0:  # 2 or 4 bits: whole codes per byte
        per = 8 // bits
        pad = (-n) % per
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        lanes = flat.reshape(-1, per)
        out = lanes[:, 0].clone()
        for j in range(1, per):
            out |= lanes[:, j] << (j * bits)
        return out
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    stream = ((flat.unsqueeze(-1) >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = torch.ones(8, dtype=torch.uint8, device=flat.device) << torch.arange(
        8, dtype=torch.uint8, device=flat.device
    )
    return (stream.reshape(-1, 8) * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes as a flat ``uint8`` tensor."""
    check_bits(bits)
    data = packed.detach().reshape(-1)
    if data.dtype != torch.uint8:
        data = data.contiguous().view(torch.uint8)
    if data.numel() < packed_numel(numel, bits):
        raise ValueError(
            f"packed data holds {data.numel()} bytes, {packed_numel(numel, bits)} needed for {numel} codes"
        )
    if bits == 8:
        return data[:numel].clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per = 8 // bits
        parts = [(data >> (j * bits)) & mask for j in range(per)]
        return torch.stack(parts, dim=-1).reshape(-1)[:numel].contiguous()
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)
    stream = ((data.unsqueeze(-1) >> shifts) & 1).reshape(-1)[: numel * bits]
    weights = torch.ones(bits, dtype=torch.uint8, device=data.device) << torch.arange(
        bits, dtype=torch.uint8, device=data.device
    )
    return (stream.reshape(numel, bits) * weights).sum(dim=-1, dtype=torch.uint8)


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`pack_bits` as a flat ``int32`` tensor (the bytes read as little-endian words)."""
    data = pack_bits(codes, bits)
    pad = (-data.numel()) % 4
    if pad:
        data = torch.cat([data, data.new_zeros(pad)])
    words = data.reshape(-1, 4).to(torch.int64)
    value = words[:, 0] | (words[:, 1] << 8) | (words[:, 2] << 16) | (words[:, 3] << 24)
    return torch.where(value >= 2**31, value - 2**32, value).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    words = packed.detach().reshape(-1).to(torch.int64) & 0xFFFFFFFF
    data = torch.stack([(words >> (8 * k)) & 0xFF for k in range(4)], dim=-1).reshape(-1).to(torch.uint8)
    return unpack_bits(data, bits, numel)
