//! Full-width folding: full-width ASCII forms (U+FF01 to U+FF5E) and the ideographic space
//! become ASCII before the detectors scan a text, and [`FoldMap`] maps what they find back
//! to the original text's offsets.

/// Whether the text holds full-width digits or symbols next to digits that must be folded.
pub(super) fn needs_fold(b: &[u8]) -> bool {
    let mut from = 0;
    while let Some(off) = memchr::memchr(0xEF, &b[from..]) {
        let i = from + off;
        if i + 2 < b.len() && b[i + 1] == 0xBC {
            let c = b[i + 2];
            if (0x90..=0x99).contains(&c) || c == 0xA0 {
                return true;
            }
            if matches!(c, 0x88 | 0x8B | 0x8D)
                && (b.get(i + 3).is_some_and(u8::is_ascii_digit)
                    || (i > 0 && b[i - 1].is_ascii_digit()))
            {
                return true;
            }
        }
        from = i + 1;
    }
    false
}

/// Maps offsets of a folded text back to the original: each folded character shrank from 3
/// bytes to 1.
pub(super) struct FoldMap {
    /// (offset in the folded text just after a folded character, total shrink so far)
    points: Vec<(usize, usize)>,
}

impl FoldMap {
    pub(super) fn original(&self, pos: usize) -> usize {
        let i = self.points.partition_point(|(q, _)| *q <= pos);
        if i == 0 {
            pos
        } else {
            pos + self.points[i - 1].1
        }
    }
}

/// Folds full-width ASCII forms and the ideographic space to ASCII. Returns the folded text
/// and the map back to the original's offsets.
pub(super) fn fold(text: &str) -> (String, FoldMap) {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut points = Vec::new();
    let mut shrink = 0;
    let mut last = 0;
    let mut from = 0;
    while let Some(off) = memchr::memchr2(0xEF, 0xE3, &b[from..]) {
        let i = from + off;
        from = i + 1;
        let Some(ch) = text.get(i..).and_then(|t| t.chars().next()) else {
            continue;
        };
        let c = ch as u32;
        let folded = if (0xFF01..=0xFF5E).contains(&c) {
            char::from_u32(c - 0xFEE0)
        } else if c == 0x3000 {
            Some(' ')
        } else {
            None
        };
        if let Some(a) = folded {
            out.push_str(&text[last..i]);
            out.push(a);
            shrink += ch.len_utf8() - 1;
            points.push((out.len(), shrink));
            last = i + ch.len_utf8();
            from = last;
        }
    }
    out.push_str(&text[last..]);
    (out, FoldMap { points })
}

#[cfg(test)]
mod tests {
    use super::super::Detectors;

    fn kinds(t: &str) -> Vec<(String, String)> {
        Detectors::all()
            .detect(t)
            .into_iter()
            .map(|d| (d.entity.to_string(), t[d.range].to_string()))
            .collect()
    }

    #[test]
    fn fold_maps_back() {
        let t = "电话１３８００１３８０００。";
        assert_eq!(
            kinds(t),
            vec![("CN_MOBILE".into(), "１３８００１３８０００".into())]
        );
    }
}
