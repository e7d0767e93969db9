//! A child's output, kept to a bounded tail so that a program printing gigabytes costs us a
//! fixed amount of memory. The tail is what matters: metrics are printed last, and the end of
//! stderr holds the error that stopped the program.

/// The last `cap` bytes a stream produced, and how many it produced in all.
#[derive(Clone, Debug)]
pub struct Captured {
    kept: Vec<u8>,
    total_bytes: u64,
    cap: usize,
}

impl Captured {
    pub(crate) fn new(cap: usize) -> Captured {
        Captured {
            kept: Vec::new(),
            total_bytes: 0,
            cap,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.total_bytes += bytes.len() as u64;
        self.kept.extend_from_slice(bytes);
        // Trim in batches, not on every read, so that keeping the tail costs amortised O(1).
        if self.kept.len() > 2 * self.cap {
            self.trim();
        }
    }

    pub(crate) fn trim(&mut self) {
        if self.kept.len() > self.cap {
            let excess = self.kept.len() - self.cap;
            self.kept.drain(..excess);
        }
    }

    /// The kept tail (at most the cap).
    pub fn bytes(&self) -> &[u8] {
        let start = self.kept.len().saturating_sub(self.cap);
        &self.kept[start..]
    }

    /// The kept tail as text; invalid UTF-8 (or a character cut at the start) becomes U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// Every byte the stream produced, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// How many bytes at the start of the stream were not kept.
    pub fn cut_bytes(&self) -> u64 {
        self.total_bytes - self.bytes().len() as u64
    }

    /// The last `limit` bytes of the kept tail as text, prefixed with a note of how much was
    /// cut when the stream was longer: the form in which output goes into feedback.
    pub fn tail_for_feedback(&self, limit: usize) -> String {
        let bytes = self.bytes();
        let tail = &bytes[bytes.len().saturating_sub(limit)..];
        let cut = self.total_bytes - tail.len() as u64;
        let text = String::from_utf8_lossy(tail);
        if cut == 0 {
            text.into_owned()
        } else {
            format!("[{cut} earlier bytes cut]\n{text}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_cap_bytes_and_counts_all() {
        let mut captured = Captured::new(4);
        for chunk in [&b"abc"[..], b"defgh", b"ij", b"klmnopq"] {
            captured.push(chunk);
        }
        captured.trim();
        assert_eq!(captured.bytes(), b"nopq");
        assert_eq!(captured.total_bytes(), 17);
        assert_eq!(captured.cut_bytes(), 13);
        assert_eq!(captured.tail_for_feedback(2), "[15 earlier bytes cut]\npq");
    }

    #[test]
    fn short_output_is_kept_whole() {
        let mut captured = Captured::new(100);
        captured.push(b"hello\n");
        assert_eq!(captured.text(), "hello\n");
        assert_eq!(captured.cut_bytes(), 0);
        assert_eq!(captured.tail_for_feedback(100), "hello\n");
    }
}
