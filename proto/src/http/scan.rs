//! Scanning for the end of a head, for the request and the response parser alike.

/// Incremental search for the blank line that ends a head. Remembers how far it got, so that
/// each byte is looked at once however the head arrives.
///
/// When the scan has to wait (or gives up) before the head is complete, it first reports the
/// first line once, so that the caller can refuse a garbage request or status line without
/// waiting for a whole head. A head that arrives whole is parsed once, not twice. Either way
/// the outcome depends only on the bytes, never on how they were split.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct HeadScan {
    /// Bytes of the buffer already scanned.
    pub(super) pos: usize,
    /// Whether a byte other than CR or LF was seen (leading empty lines are skipped).
    seen_content: bool,
    first_line: FirstLine,
}

#[derive(Debug, Default, Clone, Copy)]
enum FirstLine {
    /// Not complete yet.
    #[default]
    Pending,
    /// Complete (ends at this offset, exclusive), not yet reported.
    Unchecked(usize),
    /// Reported.
    Checked,
}

pub(super) enum Scan {
    NeedMore,
    /// No end within the first `max_head` bytes.
    TooLarge,
    /// The first line ends at this offset (exclusive); reported at most once, and only before
    /// `NeedMore` or `TooLarge`.
    FirstLine(usize),
    /// A blank line ends here (exclusive): a candidate end of the head.
    End(usize),
}

impl HeadScan {
    pub(super) fn next(&mut self, buf: &[u8], max_head: usize) -> Scan {
        let limit = buf.len().min(max_head);
        while self.pos < limit {
            let rest = buf.get(self.pos..limit).unwrap_or_default();
            if !self.seen_content {
                match rest.iter().position(|&b| b != b'\r' && b != b'\n') {
                    Some(k) => {
                        self.seen_content = true;
                        self.pos += k + 1;
                        continue;
                    }
                    None => {
                        self.pos = limit;
                        break;
                    }
                }
            }
            let Some(k) = rest.iter().position(|&b| b == b'\n') else {
                self.pos = limit;
                break;
            };
            let i = self.pos + k;
            self.pos = i + 1;
            if let FirstLine::Pending = self.first_line {
                // The first LF after content cannot also end the head.
                self.first_line = FirstLine::Unchecked(i + 1);
                continue;
            }
            let before = |back: usize| i.checked_sub(back).and_then(|j| buf.get(j)).copied();
            if before(1) == Some(b'\n') || (before(1) == Some(b'\r') && before(2) == Some(b'\n')) {
                return Scan::End(i + 1);
            }
        }
        if let FirstLine::Unchecked(end) = self.first_line {
            self.first_line = FirstLine::Checked;
            return Scan::FirstLine(end);
        }
        if buf.len() >= max_head {
            Scan::TooLarge
        } else {
            Scan::NeedMore
        }
    }
}
