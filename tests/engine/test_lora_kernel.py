"""The adapters' kernel on CPU (`rows_kernel.lora_add`, its maths in `lora_maths.h`): each row's low-rank
product from its own slot, to float32 rounding of the exact one; and a row's result that depends on its x,
its y and its slot's contents only, to the bit: not on the rows beside it (how many share its slot), the
threads, or which slot holds its adapter; rows without one untouched.

The shapes cover whole vector blocks and the columns and ranks past them, odd K, rows grouped by position
(a prompt's), and a B that is a column slice of a wider table (q, k or v of a packed projection)."""

from __future__ import annotations

import pytest
import torch

from musicgen_local.engine.fast import rows_kernel

pytestmark = pytest.mark.skipif(not rows_kernel.available(), reason="no rows kernel library (see the log)")

SHAPES = [(256, 768, 16), (40, 96, 16), (1001, 37, 13), (64, 200, 24), (33, 1024, 4)]  # (in, out, rank)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def tables(slots: int, k: int, n: int, r: int, seed: int, ranks: list[int] | None = None):
    """A [S, K, R] and B [S, R, 3N] (a packed projection's), each slot's ranks past its own zero-padded."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(slots, k, r, generator=g), torch.randn(slots, r, 3 * n, generator=g)
    rank = torch.tensor(ranks or [r] * slots)
    for s, used in enumerate(rank.tolist()):
        a[s, :, used:], b[s, used:] = 0, 0
    return a, b, rank


def reference(y, x, a, b, slot, group):
    out = y.double().clone()
    for m in range(x.shape[0]):
        s = int(slot[m // group])
        if s >= 0:
            out[m] += (x[m].double() @ a[s].double()) @ b[s].double()
    return out


@pytest.mark.parametrize("k,n,r", SHAPES)
@pytest.mark.parametrize("group", [1, 2, 5])
def test_it_adds_each_rows_low_rank_product(k, n, r, group):
    a, b, rank = tables(3, k, n, r, k + n, ranks=[r, max(1, r - 3), r])
    g = torch.Generator().manual_seed(group)
    slot = torch.tensor([1, -1, 0, 2, 2, -1])  # per group of rows
    x, y = torch.randn(6 * group, k, generator=g), torch.randn(6 * group, n, generator=g)
    part = b[:, :, n : 2 * n]  # the middle third: a slice with the table's row stride
    expected = reference(y, x, a, part, slot, group)
    before = y.clone()
    rows_kernel.lora_add(y, x, a, part, slot, rank)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4 * k**0.5)
    untouched = [m for m in range(6 * group) if slot[m // group] < 0]
    assert torch.equal(y[untouched], before[untouched])


@pytest.mark.parametrize("k,n,r", SHAPES)
def test_a_rows_result_depends_on_its_slots_contents_only(k, n, r, threads):
    """Each row again alone, with its adapter in another slot of permuted tables and on one thread: the same
    bits as in the batch, where its neighbours shared its slot or not."""
    a, b, rank = tables(4, k, n, r, k * n, ranks=[r, r, max(1, r // 2), r])
    g = torch.Generator().manual_seed(r)
    slot = torch.tensor([2, 2, 2, 2, 0, 0, 3, -1, 1, 1, 2, 3, 3])  # runs of one slot, of 4 and more
    x, y = torch.randn(len(slot), k, generator=g), torch.randn(len(slot), n, generator=g)
    batched = y.clone()
    threads(2)
    rows_kernel.lora_add(batched, x, a, b[:, :, :n], slot, rank)
    perm = [3, 1, 0, 2]  # slot s of the permuted tables holds slot perm[s]'s adapter
    moved = {old: new for new, old in enumerate(perm)}
    a2, b2, rank2 = a[perm].contiguous(), b[perm].contiguous(), rank[perm].contiguous()
    threads(1)
    for m, s in enumerate(slot.tolist()):
        one = y[m : m + 1].clone()
        rows_kernel.lora_add(one, x[m : m + 1], a2, b2[:, :, :n], torch.tensor([moved.get(s, -1)]), rank2)
        assert torch.equal(one[0], batched[m]), m
