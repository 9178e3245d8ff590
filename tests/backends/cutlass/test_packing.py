"""2:4 packers against a plain reference of each format (CPU only)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.backends.cutlass.packing import mask_2to4, pack, pad_shape, select, sm90_meta_offsets, unpack


def _sparse(rng, m, k):
    w = rng.standard_normal((m, k)).astype(np.float16)
    w[~mask_2to4(w)] = 0
    return w


@pytest.mark.parametrize("arch,tile_k", [("sm_90a", 128), ("sm_90a", 64), ("sm_80", 0)])
@pytest.mark.parametrize("m,k", [(64, 128), (72, 208), (128, 256), (8, 16), (200, 512)])
def test_pack_unpack_round_trip(arch, tile_k, m, k):
    rng = np.random.default_rng(m * k)
    w = _sparse(rng, m, k)
    p = pack(w, arch, tile_k)
    mp, kp = pad_shape(arch, m, k)
    assert (p.mp, p.kp) == (mp, kp)
    assert p.values.shape == (mp, kp // 2) and p.values.dtype == np.uint16
    assert np.array_equal(unpack(p), w.view(np.uint16))


def test_values_are_the_kept_pair_in_order():
    w = np.array([[0, 3, 0, 5, 7, 0, 0, 0]], np.float16)
    w = np.pad(w, ((0, 7), (0, 8)))
    p = pack(w, "sm_90a", 64)
    assert p.values[0, :4].view(np.float16).tolist() == [3, 5, 7, 0]
    i0, i1, _ = select(w.view(np.uint16))
    assert (i0[0, 0], i1[0, 0]) == (1, 3) and (i0[0, 1], i1[0, 1]) == (0, 3)


def test_cutlass_corner_cases_for_fewer_than_two_nonzeros():
    w = np.zeros((1, 16), np.float16)
    w[0, 3] = 1  # [0 0 0 x] -> positions (0, 3), the value second
    w[0, 6] = 2  # [0 0 x 0] -> (2, 3)
    w[0, 12] = -0.0  # negative zero counts as zero: all-zero group -> (0, 1)
    i0, i1, vals = select(w.view(np.uint16))
    assert list(zip(i0[0], i1[0])) == [(0, 3), (2, 3), (0, 1), (0, 1)]
    assert vals[0, 0].view(np.float16).tolist() == [0, 1] and vals[0, 1].view(np.float16).tolist() == [2, 0]


def test_not_2to4_is_refused_with_its_location():
    w = np.ones((8, 16), np.float16)
    with pytest.raises(ValueError, match="row 0, K group 0"):
        pack(w)


def test_sm90_metadata_offsets_form_a_permutation_and_match_the_cute_atom():
    for tk in (64, 128):
        off = sm90_meta_offsets(128, 2 * tk, tk)
        assert np.array_equal(np.sort(off.ravel()), np.arange(128 * 2 * tk // 8))
        nk = tk // 32
        # hand-evaluated points of make_ordered_layout(((8,2,4),(16,2,NumK)), ((3,1,5),(0,4,2))):
        assert off[0, 1] == 1  # k=8: inside the stride-1 mode of 16
        assert off[8, 0] == 16 // 8  # m=8: the (m//8)%2 mode, stride 16
        assert off[1, 0] == 32 * nk // 8  # m=1: stride 32*NumK
        assert off[0, 2] == 256 * nk // 8  # k=16: stride 256*NumK
        assert off[64, 0] == 2048 * nk // 8  # the next atom along M
        assert off[0, tk // 8] == 128 * tk // 8  # the next atom along K: M_aligned * tile_k


def test_sm80_matches_torch_semi_structured_conversion():
    torch = pytest.importorskip("torch")
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    rng = np.random.default_rng(3)
    for m, k in [(64, 128), (96, 256)]:
        w = _sparse(rng, m, k)
        values, meta = sparse_semi_structured_from_dense_cutlass(torch.from_numpy(w))
        p = pack(w, "sm_80")
        assert np.array_equal(values.numpy().view(np.uint16), p.values)
        assert np.array_equal(meta.numpy().view(np.uint16).ravel(), p.meta.view(np.uint16))


def test_bf16_bits_pack_like_any_16bit_word():
    torch = pytest.importorskip("torch")
    w = torch.randn(64, 128).to(torch.bfloat16)
    keep = torch.from_numpy(mask_2to4(w.float().numpy()))
    w = w * keep
    bits = w.view(torch.int16).numpy().view(np.uint16)
    p = pack(bits, "sm_90a", 128)
    assert torch.equal(torch.from_numpy(unpack(p).view(np.int16)).view(torch.bfloat16), w)


@pytest.mark.parametrize("arch,tile_k", [("sm_90a", 128), ("sm_90a", 64), ("sm_80", 0)])
def test_torch_packer_is_bit_identical_to_the_numpy_reference(arch, tile_k):
    torch = pytest.importorskip("torch")
    from sparsec.backends.cutlass.packing import pack_torch

    rng = np.random.default_rng(11)
    w = _sparse(rng, 72, 208)
    w[0, :4] = [0, 0, 0, 1]  # the one-nonzero and all-zero corner cases
    w[1, :8] = [0, 2, 0, 0, 0, 0, 0, 0]
    p = pack(w, arch, tile_k)
    values, meta = pack_torch(torch.from_numpy(w), arch, tile_k)
    assert np.array_equal(values.view(torch.int16).numpy().view(np.uint16), p.values)
    assert np.array_equal(meta.numpy(), p.meta)
    with pytest.raises(ValueError, match="not 2:4"):
        pack_torch(torch.ones(8, 16, dtype=torch.float16), arch, tile_k)


@pytest.mark.parametrize("arch,sparse,k,kp", [("sm_90a", True, 24, 32), ("sm_90a", False, 24, 24), ("sm_90a", False, 20, 24),
                                               ("sm_80", False, 24, 64), ("sm_80", True, 72, 128)])
def test_pad_shape_pads_k_only_as_far_as_the_kernel_needs(arch, sparse, k, kp):
    assert pad_shape(arch, 40, k, sparse=sparse)[1] == kp
