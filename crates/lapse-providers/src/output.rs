//! A bounded buffer for command output: it keeps the **tail** (the last `cap` bytes), since
//! what a command printed last (its error, its result) is what a caller wants, and counts
//! what it dropped. It never holds more than twice `cap` plus one chunk.

/// The last `cap` bytes of a stream, and how many came before them.
#[derive(Clone, Debug)]
pub struct CappedOutput {
    cap: usize,
    buf: Vec<u8>,
    /// Bytes dropped from the front so far.
    dropped: u64,
}

impl Default for CappedOutput {
    fn default() -> Self {
        CappedOutput::new(crate::MAX_OUTPUT_BYTES)
    }
}

impl CappedOutput {
    pub fn new(cap: usize) -> Self {
        CappedOutput { cap, buf: Vec::new(), dropped: 0 }
    }

    /// Appends a chunk, dropping from the front once the buffer passes twice the cap (so the
    /// copying is amortised).
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > 2 * self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
            self.dropped += cut as u64;
        }
    }

    /// Every byte pushed, kept or not.
    pub fn total(&self) -> u64 {
        self.dropped + self.buf.len() as u64
    }

    /// The text: the last `cap` bytes (lossy UTF-8), after a line saying how much was cut if
    /// anything was.
    pub fn into_text(self) -> String {
        let start = self.buf.len().saturating_sub(self.cap);
        let dropped = self.dropped + start as u64;
        let kept = &self.buf[start..];
        let text = String::from_utf8_lossy(kept);
        if dropped == 0 {
            return text.into_owned();
        }
        format!("{}{text}", truncation_marker(dropped, kept.len()))
    }
}

/// The line that opens a cut output.
pub fn truncation_marker(dropped: u64, kept: usize) -> String {
    format!("[lapse: output truncated: {dropped} bytes cut, the last {kept} bytes follow]\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_says_what_it_cut() {
        let mut out = CappedOutput::new(4);
        out.push(b"ab");
        assert_eq!(out.clone().into_text(), "ab");
        for chunk in [b"cdef".as_slice(), b"ghij", b"k"] {
            out.push(chunk);
            assert!(out.buf.len() <= 8 + chunk.len());
        }
        assert_eq!(out.total(), 11);
        assert_eq!(out.into_text(), format!("{}hijk", truncation_marker(7, 4)));
    }
}
