//! The order of inner joins: a greedy choice by estimated cost.
//!
//! There are no table statistics, so estimates come from the access paths (a primary-key
//! point read is 1 row, an index lookup 10, a filtered scan a fraction of a guessed table
//! size; see `from.rs`). The first table is the one with the fewest estimated rows; each
//! next table is the one cheapest to join to the tables so far — a key lookup per outer row
//! when the join equates its primary key or an index, a hash join when it equates other
//! columns, a cross product only when nothing connects it. Ties keep the written order, so
//! a query whose tables look alike runs as written.

use super::from::LOOKUP_OUTER_ROWS_MAX;

/// How a candidate table can join the tables chosen so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Link {
    /// No equality with them: every pair is tried.
    None,
    /// Equalities, but no key or index on the candidate's side.
    Hash,
    /// Its primary key or an index is equated: each outer row finds about this many rows.
    Lookup { rows_per_outer: f64 },
}

/// Cost of joining a table of `rows` estimated rows to `outer` rows so far, and the rows
/// the join is estimated to produce.
fn cost(outer: f64, rows: f64, link: Link) -> (f64, f64) {
    match link {
        Link::Lookup { rows_per_outer } if outer <= LOOKUP_OUTER_ROWS_MAX => {
            (outer * rows_per_outer, outer * rows_per_outer)
        }
        Link::Lookup { .. } | Link::Hash => (outer + rows, outer.max(rows)),
        Link::None => (outer * rows.max(1.0), outer * rows.max(1.0)),
    }
}

/// The order (a permutation of `0..rows.len()`) for tables of `rows` estimated rows each;
/// `link(joined, candidate)` says how `candidate` joins the set `joined` (a bit mask).
pub(crate) fn choose(rows: &[f64], link: &dyn Fn(u64, usize) -> Link) -> Vec<usize> {
    let smallest = |candidates: &mut dyn Iterator<Item = (usize, f64)>| {
        // `<` keeps the earliest of equal costs: ties stay in the written order.
        candidates.fold(None, |best: Option<(usize, f64)>, (i, c)| match best {
            Some((_, b)) if b <= c => best,
            _ => Some((i, c)),
        })
    };
    let Some((first, _)) = smallest(&mut rows.iter().copied().enumerate()) else { return Vec::new() };
    let mut order = vec![first];
    let mut joined = 1u64 << first;
    let mut outer = rows[first];
    while order.len() < rows.len() {
        let mut candidates =
            (0..rows.len()).filter(|i| joined & (1 << i) == 0).map(|i| (i, cost(outer, rows[i], link(joined, i)).0));
        let (next, _) = smallest(&mut candidates).expect("a table is left to join");
        outer = cost(outer, rows[next], link(joined, next)).1;
        order.push(next);
        joined |= 1 << next;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_keep_the_written_order() {
        assert_eq!(choose(&[100.0, 100.0, 100.0], &|_, _| Link::Hash), vec![0, 1, 2]);
    }

    #[test]
    fn the_smallest_table_drives_keyed_lookups() {
        // t0 (big) is equated by t1's key; t1 is filtered to one row.
        let link = |joined: u64, candidate: usize| match (joined, candidate) {
            (0b10, 0) => Link::Lookup { rows_per_outer: 10.0 },
            (0b01, 1) => Link::Lookup { rows_per_outer: 1.0 },
            _ => Link::None,
        };
        assert_eq!(choose(&[100_000.0, 1.0], &link), vec![1, 0]);
    }

    #[test]
    fn the_smallest_goes_first_then_the_cheapest_next() {
        // t1 joins t0 by key; t2 is connected to nothing but is tiny, so it drives.
        let link = |joined: u64, candidate: usize| match candidate {
            1 if joined & 1 != 0 => Link::Lookup { rows_per_outer: 1.0 },
            0 if joined & 2 != 0 => Link::Hash,
            _ => Link::None,
        };
        assert_eq!(choose(&[50.0, 1000.0, 20.0], &link), vec![2, 0, 1]);
    }
}
