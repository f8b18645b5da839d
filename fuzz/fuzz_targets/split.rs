//! Shared by the targets: the first byte of the input says how many cut points follow (two
//! bytes each); the rest is the payload, cut into chunks at those points.

/// `(chunks, payload)`: the payload and its chunking.
pub fn chunked(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (vec![], &[]);
    };
    let n = usize::from(n % 16).min(rest.len() / 2);
    let (cut_bytes, payload) = rest.split_at(n * 2);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (payload.len() + 1))
        .collect();
    cuts.push(0);
    cuts.push(payload.len());
    cuts.sort_unstable();
    cuts.dedup();
    let chunks = cuts.windows(2).map(|w| &payload[w[0]..w[1]]).collect();
    (chunks, payload)
}
