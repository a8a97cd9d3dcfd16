//! Glob patterns as `KEYS` and `CONFIG GET` take them: `*`, `?`,
//! `[abc]`, `[^abc]`, `[a-z]` and `\x` for a literal `x`.
//!
//! Matching backtracks only to the last `*` seen, so it takes at most
//! pattern × text steps whatever the pattern (a pattern of many stars
//! cannot make it exponential).

/// Whether `text` matches `pat`.
pub fn matches(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, text position).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((hit, next)) = class(pat, p, text[t])
                        && hit
                    {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last star take one more byte.
        match star {
            Some((sp, st)) => {
                star = Some((sp, st + 1));
                p = sp;
                t = st + 1;
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// The class starting at `pat[at] == '['` against `c`: whether it matched
/// and where the pattern goes on. An unterminated class runs to the end.
fn class(pat: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = pat.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < pat.len() && pat[i] != b']' {
        if pat[i] == b'\\' && i + 1 < pat.len() {
            hit |= pat[i + 1] == c;
            i += 2;
        } else if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
            let (lo, hi) = if pat[i] <= pat[i + 2] { (pat[i], pat[i + 2]) } else { (pat[i + 2], pat[i]) };
            hit |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            hit |= pat[i] == c;
            i += 1;
        }
    }
    Some((hit != negate, (i + 1).min(pat.len())))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        assert!(matches(b"*", b""));
        assert!(matches(b"*", b"anything"));
        assert!(matches(b"h?llo", b"hello"));
        assert!(!matches(b"h?llo", b"hllo"));
        assert!(matches(b"h*llo", b"heeeello"));
        assert!(matches(b"h[ae]llo", b"hallo"));
        assert!(!matches(b"h[ae]llo", b"hillo"));
        assert!(matches(b"h[^e]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-b]llo", b"hbllo"));
        assert!(matches(b"h[b-a]llo", b"hallo"));
        assert!(matches(b"key:\\*", b"key:*"));
        assert!(!matches(b"key:\\*", b"key:x"));
        assert!(matches(b"key:*:end", b"key:a:b:end"));
        assert!(!matches(b"key:*:end", b"key:a:b:en"));
        assert!(matches(b"*a*b*c", b"xxaxxbxxc"));
    }

    #[test]
    fn many_stars_stay_linear() {
        let pat = [b'*'; 64].iter().chain(b"x").copied().collect::<alloc::vec::Vec<u8>>();
        let text = [b'a'; 4096];
        assert!(!matches(&pat, &text));
    }
}
