"""CompactIds (sync_server/auth/ids.py) behaves as a set of strings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync_server.auth.ids import CompactIds

ids = st.lists(st.text(max_size=4), max_size=30)


@given(ids, ids, ids)
def test_it_behaves_as_a_set(start: list[str], added: list[str], removed: list[str]) -> None:
    compact, plain = CompactIds(start), set(start)
    for i in added[:10]:
        compact.add(i)
        plain.add(i)
    compact.update(added[10:])
    plain.update(added[10:])
    for i in removed[:10]:
        compact.discard(i)
        plain.discard(i)
    compact.difference_update(removed[10:])
    plain.difference_update(removed[10:])
    assert compact.sorted() == sorted(plain) and len(compact) == len(plain)
    assert all(i in compact for i in plain)
    assert not any(i in compact for i in set(added + removed + start) - plain)
    assert 3 not in compact and bool(compact) == bool(plain)
