//! Scans: the keys of a span in key order, a page at a time.
//!
//! A page is served like a get, at a read index the leader has confirmed,
//! from one range's state, so a page is linearizable. A scan longer than a
//! page, or wider than a range, is several reads: the client continues from
//! the page's resume key, and keys written between two pages may or may not
//! appear (see docs/ranges.md, "Scans").

/// Pairs one page holds at most, whatever the request's limit.
pub const SCAN_PAIRS_MAX: usize = 10_000;
/// Bytes of keys and values one page holds: it stops before the pair that
/// would cross this, unless that pair is its first. A page with its largest
/// pair still fits in one client frame (checked in `wire`).
pub const SCAN_PAGE_BYTES_MAX: usize = 1 << 20;
/// What a pair costs beyond its key and value in a page's frame (protobuf
/// tags and lengths), counted against `SCAN_PAGE_BYTES_MAX`.
pub const SCAN_PAIR_OVERHEAD_BYTES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// One page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    pub pairs: Vec<KeyValue>,
    /// Where the scan goes on, if it stopped before its end: the first key
    /// it did not return, or the end of the range that answered.
    pub resume: Option<Vec<u8>>,
    /// The log position of the state the page was read from.
    pub term: u64,
    pub index: u64,
}

/// The pairs a page may hold for a request's `limit` (0: as many as allowed).
pub fn page_limit(limit: u32) -> usize {
    match usize::try_from(limit) {
        Ok(0) | Err(_) => SCAN_PAIRS_MAX,
        Ok(limit) => limit.min(SCAN_PAIRS_MAX),
    }
}

/// Fills a page from `pairs`, which come in key order from the scan's start
/// and stop at its end or the range's, whichever is first. `boundary` is
/// where the scan resumes once `pairs` run out: the range's end, when the
/// scan reaches past it. Reads one pair beyond a full page, so that a
/// resume key is always a key that exists or the boundary.
pub fn fill_page<E>(
    pairs: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
    limit: u32,
    boundary: Option<Vec<u8>>,
) -> Result<(Vec<KeyValue>, Option<Vec<u8>>), E> {
    let limit = page_limit(limit);
    let mut page = Vec::new();
    let mut bytes = 0;
    for pair in pairs {
        let (key, value) = pair?;
        let cost = key.len() + value.len() + SCAN_PAIR_OVERHEAD_BYTES;
        if page.len() == limit || (!page.is_empty() && bytes + cost > SCAN_PAGE_BYTES_MAX) {
            return Ok((page, Some(key)));
        }
        bytes += cost;
        page.push(KeyValue { key, value });
    }
    Ok((page, boundary))
}

/// Whether the scan's `end` reaches past `range_end` (None: no end), so
/// that it must go on in the next range.
pub fn reaches_past(end: Option<&[u8]>, range_end: Option<&[u8]>) -> bool {
    match (end, range_end) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(end), Some(range_end)) => end > range_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(keys: &[&str], value_bytes: usize) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), ()>> {
        let owned: Vec<_> = keys.iter().map(|key| Ok((key.as_bytes().to_vec(), vec![7; value_bytes]))).collect();
        owned.into_iter()
    }

    fn keys(page: &[KeyValue]) -> Vec<String> {
        page.iter().map(|pair| String::from_utf8(pair.key.clone()).unwrap()).collect()
    }

    #[test]
    fn a_full_page_resumes_at_the_first_key_it_did_not_return() {
        let (page, resume) = fill_page(pairs(&["a", "b", "c"], 1), 2, None).unwrap();
        assert_eq!(keys(&page), ["a", "b"]);
        assert_eq!(resume.as_deref(), Some(&b"c"[..]));
    }

    #[test]
    fn a_page_that_runs_out_resumes_at_the_boundary_or_not_at_all() {
        let (page, resume) = fill_page(pairs(&["a", "b"], 1), 2, None).unwrap();
        assert_eq!((keys(&page), resume), (vec!["a".to_string(), "b".to_string()], None));
        let (_, resume) = fill_page(pairs(&["a"], 1), 0, Some(b"m".to_vec())).unwrap();
        assert_eq!(resume.as_deref(), Some(&b"m"[..]));
    }

    #[test]
    fn a_page_stops_at_its_byte_limit_but_always_holds_one_pair() {
        let value_bytes = SCAN_PAGE_BYTES_MAX / 2;
        let (page, resume) = fill_page(pairs(&["a", "b", "c"], value_bytes), 0, None).unwrap();
        assert_eq!(keys(&page), ["a"], "a second half-megabyte value crosses the page's bytes");
        assert_eq!(resume.as_deref(), Some(&b"b"[..]));
        let (page, _) = fill_page(pairs(&["big"], SCAN_PAGE_BYTES_MAX * 2), 0, None).unwrap();
        assert_eq!(keys(&page), ["big"]);
    }

    #[test]
    fn limits_are_capped_and_zero_means_the_cap() {
        assert_eq!(page_limit(0), SCAN_PAIRS_MAX);
        assert_eq!(page_limit(u32::MAX), SCAN_PAIRS_MAX);
        assert_eq!(page_limit(3), 3);
    }

    #[test]
    fn only_a_scan_wider_than_its_range_reaches_past_it() {
        assert!(!reaches_past(None, None));
        assert!(reaches_past(None, Some(b"m")));
        assert!(reaches_past(Some(b"n"), Some(b"m")));
        assert!(!reaches_past(Some(b"m"), Some(b"m")));
        assert!(!reaches_past(Some(b"c"), None));
    }
}
