"""Open data's small-cell suppression (sync_server/projection/opendata.py): no count below
the threshold is published, and no combination of published counts reveals one, checked
against an attacker who propagates every sum's bounds. Pure logic."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sync_server.projection.opendata import Cell, suppress, suppress_part

K = 5


def with_sums(localities: dict[Cell, int]) -> dict[Cell, int]:
    cells: dict[Cell, int] = dict(localities)
    cells[()] = sum(localities.values())
    for (county, _), n in localities.items():
        cells[(county,)] = cells.get((county,), 0) + n
    return cells


def attacker_bounds(cells: dict[Cell, int], hidden: set[Cell]) -> dict[Cell, tuple[int, int]]:
    """What someone holding only the published counts can say of each hidden one: the
    bounds that every sum (parent = its children) and non-negativity imply, propagated
    until nothing moves."""
    big = 10**6  # (a hidden count is known to be no more than "a lot")
    lo = {c: (cells[c] if c not in hidden else 0) for c in cells}
    hi = {c: (cells[c] if c not in hidden else big) for c in cells}
    groups: list[tuple[Cell, list[Cell]]] = [((), sorted({c[:1] for c in cells if c}))]
    for (county,) in {c[:1] for c in cells if c}:
        groups.append(((county,), sorted(c for c in cells if len(c) == 2 and c[0] == county)))
    for _ in range(50):
        moved = False
        for parent, children in groups:
            new = {parent: (max(lo[parent], sum(lo[c] for c in children)),
                            min(hi[parent], sum(hi[c] for c in children)))}
            for c in children:
                others_lo = sum(lo[o] for o in children if o != c)
                others_hi = sum(hi[o] for o in children if o != c)
                new[c] = (max(lo[c], lo[parent] - others_hi), min(hi[c], hi[parent] - others_lo))
            for cell, (a, b) in new.items():
                if (a, b) != (lo[cell], hi[cell]):
                    lo[cell], hi[cell], moved = a, b, True
        if not moved:
            break
    return {c: (lo[c], hi[c]) for c in hidden}


areas = st.dictionaries(
    st.tuples(st.sampled_from(["AB", "CJ", "BV"]), st.sampled_from(
        ["1", "2", "3", "4", "5", "6"])),
    st.one_of(st.integers(0, 6), st.integers(0, 60)), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(areas)
def test_nothing_below_the_threshold_is_published_or_revealed(localities) -> None:
    cells = with_sums(localities)
    hidden = suppress(cells, K)
    assert all(n >= K for c, n in cells.items() if c not in hidden)
    for cell, (lo, hi) in attacker_bounds(cells, hidden).items():
        assert lo < hi, (cell, cells, hidden)  # never pinned down
        assert lo <= cells[cell] <= hi  # (the attacker's reasoning is sound)


def test_one_small_locality_takes_a_second_one_with_it_not_its_county() -> None:
    cells = with_sums({("CJ", "1"): 2, ("CJ", "2"): 40, ("CJ", "3"): 9, ("BV", "4"): 30})
    hidden = suppress(cells, K)
    # "1" alone would be CJ minus the others; "3", the smallest other, goes too, and
    # together they count 11 >= 5: CJ (51) and the nation stay published
    assert hidden == {("CJ", "1"), ("CJ", "3")}


def test_a_county_of_one_locality_is_hidden_with_it() -> None:
    cells = with_sums({("CJ", "1"): 3, ("BV", "4"): 30, ("AB", "7"): 12})
    hidden = suppress(cells, K)
    assert {("CJ", "1"), ("CJ",)} <= hidden  # CJ (3) is small itself
    # and the nation minus BV and AB would give CJ: a second county is hidden
    assert ("AB",) in hidden or ("BV",) in hidden


def test_the_attacker_pins_a_cell_that_primary_suppression_alone_leaves_open() -> None:
    """The check above would be empty if the attacker could not find anything: hiding
    only the small cell lets it be computed from its county and its neighbour."""
    cells = with_sums({("CJ", "1"): 2, ("CJ", "2"): 40})
    primary = {c for c, n in cells.items() if n < K}
    assert attacker_bounds(cells, primary) == {("CJ", "1"): (2, 2)}


def linked_bounds(whole: dict[Cell, int], part: dict[Cell, int], hidden_whole: set[Cell],
                  hidden_part: set[Cell]) -> dict[tuple[str, Cell], tuple[int, int]]:
    """The attacker again, over three linked tables: the whole, the part and the rest
    (never published), each adding up over the areas, and whole = part + rest in every
    cell. Bounds of every cell that is not published, by name ("w", "p", "r") and cell."""
    big = 10**6
    rest = {c: whole[c] - part[c] for c in whole}
    tables = {"w": (whole, hidden_whole), "p": (part, hidden_part), "r": (rest, set(rest))}
    lo = {(t, c): (v[c] if c not in h else 0) for t, (v, h) in tables.items() for c in v}
    hi = {(t, c): (v[c] if c not in h else big) for t, (v, h) in tables.items() for c in v}
    groups: list[tuple[Cell, list[Cell]]] = [((), sorted({c[:1] for c in whole if c}))]
    for (county,) in {c[:1] for c in whole if c}:
        groups.append(((county,), sorted(c for c in whole if len(c) == 2 and c[0] == county)))
    relations = [[(t, parent)] + [(t, c) for c in children]
                 for t in tables for parent, children in groups]
    relations += [[("w", c), ("p", c), ("r", c)] for c in whole]  # first = sum of the others
    for _ in range(200):
        moved = False
        for total, *terms in relations:
            new = {total: (max(lo[total], sum(lo[x] for x in terms)),
                           min(hi[total], sum(hi[x] for x in terms)))}
            for x in terms:
                new[x] = (max(lo[x], lo[total] - sum(hi[o] for o in terms if o != x)),
                          min(hi[x], hi[total] - sum(lo[o] for o in terms if o != x)))
            for key, (a, b) in new.items():
                if (a, b) != (lo[key], hi[key]):
                    lo[key], hi[key], moved = a, b, True
        if not moved:
            break
    published = {("w", c) for c in whole if c not in hidden_whole} | \
        {("p", c) for c in part if c not in hidden_part}
    return {key: (lo[key], hi[key]) for key in lo if key not in published}


def test_a_part_is_hidden_where_it_leaves_fewer_than_the_threshold_outside_it() -> None:
    """Households with a vulnerability, published next to the households: where all but
    two have it, the two are named as well as if they were published."""
    whole = with_sums({("CJ", "1"): 20, ("CJ", "2"): 30, ("BV", "3"): 9})
    part = with_sums({("CJ", "1"): 18, ("CJ", "2"): 10, ("BV", "3"): 9})
    hidden_whole = suppress(whole, K)
    hidden = suppress_part(whole, hidden_whole, part, K)
    assert {("CJ", "1"), ("BV", "3"), ("BV",)} <= hidden  # 20-18, 9-9, 9-9
    rest = {c: whole[c] - part[c] for c in whole}
    for (table, cell), (lo, hi) in linked_bounds(whole, part, hidden_whole, hidden).items():
        value = {"w": whole, "p": part, "r": rest}[table][cell]
        assert lo < hi or value >= K, (table, cell)  # only a count of K or more is known


def test_every_household_of_two_villages_having_it_is_not_worked_out() -> None:
    """Found in review: the rest of a part was only looked at cell by cell, so two
    villages where every household has a vulnerability (20 of 20, 30 of 30) had their
    hidden parts worked out from the county's sums, and a published part pinned a hidden
    whole. The rest is now suppressed as a measure of its own."""
    whole = with_sums({("CJ", "1"): 20, ("CJ", "2"): 30, ("BV", "3"): 40})
    part = with_sums({("CJ", "1"): 20, ("CJ", "2"): 30, ("BV", "3"): 12})
    hidden_whole = suppress(whole, K)
    hidden = suppress_part(whole, hidden_whole, part, K)
    rest = {c: whole[c] - part[c] for c in whole}
    for (table, cell), (lo, hi) in linked_bounds(whole, part, hidden_whole, hidden).items():
        value = {"w": whole, "p": part, "r": rest}[table][cell]
        assert lo < hi or value >= K, (table, cell)


@settings(max_examples=300, deadline=None)
@given(areas, st.data())
def test_no_cell_of_a_part_its_whole_or_their_difference_is_pinned(localities, data) -> None:
    whole = with_sums(localities)
    part = with_sums({c: data.draw(st.integers(0, n)) for c, n in localities.items()})
    hidden_whole = suppress(whole, K)
    hidden = suppress_part(whole, hidden_whole, part, K)
    assert all(n >= K for c, n in part.items() if c not in hidden)
    rest = {c: whole[c] - part[c] for c in whole}
    for (table, cell), (lo, hi) in linked_bounds(whole, part, hidden_whole, hidden).items():
        value = {"w": whole, "p": part, "r": rest}[table][cell]
        assert lo <= value <= hi
        assert lo < hi or value >= K, (table, cell, localities, part)



def test_a_county_is_not_pinned_between_its_localities_and_the_nation() -> None:
    """Found by the property test while building this: AB = 0 + 5, CJ = 0, the nation 5.
    Hiding AB, CJ and the two zeros (their sum, 5, is not small) still let the nation (5)
    and AB's published locality (5) pin AB at 5 and CJ at 0. The hidden children of a sum
    must hold K more than their own published children show."""
    cells = with_sums({("AB", "1"): 0, ("AB", "2"): 5, ("CJ", "1"): 0})
    naive = {("AB",), ("AB", "1"), ("CJ",), ("CJ", "1")}
    assert attacker_bounds(cells, naive)[("CJ",)] == (0, 0)
    for cell, (lo, hi) in attacker_bounds(cells, suppress(cells, K)).items():
        assert lo < hi, cell
