//! Cutting a file's byte stream into chunks that end on a record boundary, so that chunks can
//! be decoded in parallel and each chunk's first line number is known.
//!
//! CSV allows newlines inside quoted values, so a newline is a boundary only where csv-core
//! (the tokenizer the CSV decoder uses) would end a record there. [`CsvBoundaries`] follows
//! csv-core's rules for quotes: a quote opens a quoted value only at the start of a field; in
//! a quoted value a doubled quote or an escaped byte is data; after the closing quote the
//! field goes on unquoted. It jumps from quote to newline with `memchr`, so a file without
//! quotes is scanned at memory speed. JSON lines cannot hold a raw newline inside a value, so
//! every newline is a boundary there.

use bytes::{Bytes, BytesMut};

/// A chunk of whole records, and where it starts in its file.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The bytes, ending at a record boundary (or at the end of the file), in pieces: the
    /// blocks read, or slices of them (see [`Splitter`]); a record may span two pieces.
    pub parts: Vec<Bytes>,
    /// The file line the chunk's first byte is on (1 = the file's first line).
    pub first_line: u64,
    /// Whether the chunk starts at the top of the file, where a CSV header is.
    pub first: bool,
}

impl Chunk {
    /// The bytes in one piece (copied only when there are two).
    pub fn contiguous(&self) -> Bytes {
        self.slice_from(0)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces from byte `from` on.
    pub fn parts_from(&self, from: usize) -> Vec<&[u8]> {
        let mut skip = from;
        let mut out = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            out.push(&p[skip..]);
            skip = 0;
        }
        out
    }

    /// The bytes from `from` on, in one piece (copied only when they span two).
    pub fn slice_from(&self, from: usize) -> Bytes {
        let mut skip = from;
        for (i, p) in self.parts.iter().enumerate() {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            if i + 1 == self.parts.len() {
                return p.slice(skip..);
            }
            let mut all = p[skip..].to_vec();
            for q in &self.parts[i + 1..] {
                all.extend_from_slice(q);
            }
            return Bytes::from(all);
        }
        Bytes::new()
    }

    /// The byte at `at`, if the chunk is that long.
    pub fn byte_at(&self, at: usize) -> Option<u8> {
        let mut skip = at;
        for p in &self.parts {
            if skip < p.len() {
                return Some(p[skip]);
            }
            skip -= p.len();
        }
        None
    }

    /// The line ends before byte `end` (see [`line_ends`]).
    pub fn newlines_before(&self, end: usize) -> u64 {
        let mut left = end;
        let mut n = 0;
        let mut after_cr = false;
        for p in &self.parts {
            let take = left.min(p.len());
            n += line_ends(&p[..take], after_cr);
            after_cr = take > 0 && p[take - 1] == b'\r';
            left -= take;
        }
        n
    }

    fn newlines(&self) -> u64 {
        self.newlines_before(self.len())
    }
}

/// The line ends in `bytes`, whatever the file's convention: `\n`, `\r\n` (counted once) and a
/// lone `\r` (old Mac files, Excel's "CSV (Macintosh)"). `after_cr`: the byte before `bytes`
/// was a `\r`, so a `\n` first completes that line end.
pub(crate) fn line_ends(bytes: &[u8], after_cr: bool) -> u64 {
    // Most files end lines with `\n` alone: memchr's count (vector instructions) is several
    // times faster than visiting each line end, and this runs over every byte read.
    if memchr::memchr(b'\r', bytes).is_none() {
        let n = memchr::memchr_iter(b'\n', bytes).count() as u64;
        // A first `\n` completes the `\r\n` the bytes before began.
        return n - u64::from(after_cr && bytes.first() == Some(&b'\n'));
    }
    let mut n = 0;
    for i in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        let before = if i == 0 {
            after_cr.then_some(b'\r')
        } else {
            Some(bytes[i - 1])
        };
        if bytes[i] == b'\r' || before != Some(b'\r') {
            n += 1;
        }
    }
    n
}

/// What comes next out of a [`Splitter`].
#[derive(Debug)]
pub enum Piece {
    /// Whole records.
    Chunk(Chunk),
    /// A record that ran past the longest allowed without ending (in CSV, most likely an
    /// unbalanced quote): its line and first bytes. Nothing after it in the file can be
    /// split reliably, so the rest of the file belongs to it.
    Overlong {
        /// The line the record starts on.
        line: u64,
        /// Its first bytes.
        head: Bytes,
    },
}

/// Finds the record boundaries of a CSV stream, fed a buffer at a time.
#[derive(Debug, Clone)]
pub struct CsvBoundaries {
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    state: State,
    /// The byte before the next one to scan (a quote opens a field only after a delimiter
    /// or a line end).
    prev: Option<u8>,
    /// The last buffer ended with a `\r` outside quotes: a line end, unless the next byte is
    /// its `\n`.
    cr_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside a quoted value.
    Unquoted,
    /// Inside a quoted value.
    Quoted,
    /// Just after a quote inside a quoted value: a second quote is data, anything else
    /// closes the value.
    QuoteInQuoted,
    /// Just after the escape byte inside a quoted value.
    Escaped,
}

impl CsvBoundaries {
    /// A scanner for the given dialect.
    pub fn new(delimiter: u8, quote: u8, escape: Option<u8>) -> CsvBoundaries {
        CsvBoundaries {
            delimiter,
            quote,
            escape,
            state: State::Unquoted,
            prev: None,
            cr_pending: false,
        }
    }

    /// Scans `buf` (which follows what was scanned before) and returns the offset just after
    /// the last record-ending line end in it (`\n`, or a lone `\r`), if any. A `\r` that ends
    /// `buf` is no cut: the next byte may be its `\n`.
    pub fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        let mut last = None;
        if std::mem::take(&mut self.cr_pending) && buf.first().is_some_and(|b| *b != b'\n') {
            // The previous buffer's last byte, a bare `\r`, ended a record.
            last = Some(0);
        }
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Unquoted => {
                    let Some(k) = memchr::memchr3(self.quote, b'\n', b'\r', &buf[i..]) else {
                        i = buf.len();
                        continue;
                    };
                    let at = i + k;
                    let before = if at == 0 {
                        self.prev
                    } else {
                        Some(buf[at - 1])
                    };
                    if buf[at] == b'\n' {
                        last = Some(at + 1);
                    } else if buf[at] == b'\r' {
                        match buf.get(at + 1) {
                            Some(b'\n') => {}
                            Some(_) => last = Some(at + 1),
                            None => self.cr_pending = true,
                        }
                    } else if matches!(before, None | Some(b'\n' | b'\r'))
                        || before == Some(self.delimiter)
                    {
                        self.state = State::Quoted;
                    }
                    i = at + 1;
                }
                State::Quoted => {
                    let found = match self.escape {
                        Some(e) if e != self.quote => memchr::memchr2(self.quote, e, &buf[i..]),
                        _ => memchr::memchr(self.quote, &buf[i..]),
                    };
                    let Some(k) = found else {
                        i = buf.len();
                        continue;
                    };
                    let at = i + k;
                    self.state = if buf[at] == self.quote {
                        State::QuoteInQuoted
                    } else {
                        State::Escaped
                    };
                    i = at + 1;
                }
                State::QuoteInQuoted => {
                    if buf[i] == self.quote {
                        self.state = State::Quoted;
                        i += 1;
                    } else {
                        // The value is closed; this byte is read again as unquoted.
                        self.state = State::Unquoted;
                    }
                }
                State::Escaped => {
                    self.state = State::Quoted;
                    i += 1;
                }
            }
        }
        if let Some(b) = buf.last() {
            self.prev = Some(*b);
        }
        last
    }
}

/// How records end in a format.
#[derive(Debug, Clone)]
pub enum Boundaries {
    /// CSV, quotes honoured.
    Csv(CsvBoundaries),
    /// Newline-delimited JSON: every newline.
    Lines,
}

impl Boundaries {
    fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        match self {
            Boundaries::Csv(c) => c.scan(buf),
            Boundaries::Lines => memchr::memrchr(b'\n', buf).map(|i| i + 1),
        }
    }
}

/// Cuts a byte stream into [`Chunk`]s of about `target` bytes each.
///
/// Blocks are not copied: a chunk is made of the blocks (and slices of them) its bytes are in,
/// and the partial record after its last boundary stays behind as a slice of the block it is
/// in. Only blocks smaller than [`GATHER_BELOW`] (a decompressed stream's) are copied, gathered
/// into one piece, so that a chunk is not thousands of tiny pieces.
#[derive(Debug)]
pub struct Splitter {
    boundaries: Boundaries,
    target: usize,
    max_record: usize,
    /// Bytes scanned and not yet handed out, in order, before those in `gather`.
    parts: Vec<Bytes>,
    /// Small blocks gathered, after `parts`.
    gather: BytesMut,
    /// The bytes in `parts` and `gather`.
    len: usize,
    /// The end of the last boundary found in the bytes not yet handed out.
    cut: Option<usize>,
    line: u64,
    first: bool,
    /// Whether a byte other than a line end has been seen: the first chunk must hold the
    /// file's first record (a CSV header may follow blank lines, which csv-core skips).
    started: bool,
    /// Past an overlong record: the rest of the file is dropped.
    skipping: bool,
}

/// Blocks smaller than this are copied into one piece rather than kept as they come.
const GATHER_BELOW: usize = 64 << 10;

impl Splitter {
    /// A splitter that hands out chunks of at least `target` bytes (except the last), and
    /// gives up on a record longer than `max_record` bytes.
    pub fn new(boundaries: Boundaries, target: usize, max_record: usize) -> Splitter {
        Splitter {
            boundaries,
            target: target.max(1),
            max_record: max_record.max(1),
            parts: Vec::new(),
            gather: BytesMut::new(),
            len: 0,
            cut: None,
            line: 1,
            first: true,
            started: false,
            skipping: false,
        }
    }

    /// Adds the next bytes of the file; returns what is ready.
    pub fn push(&mut self, block: Bytes) -> Option<Piece> {
        // (An empty block, which a store may send, says nothing: in particular not whether a
        // bare `\r` that ended the block before it ended a record.)
        if self.skipping || block.is_empty() {
            return None;
        }
        let found = self.boundaries.scan(&block).filter(|end| {
            // No cut before the file's first record.
            self.started || block[..*end].iter().any(|b| !matches!(b, b'\n' | b'\r'))
        });
        if !self.started {
            self.started = block.iter().any(|b| !matches!(b, b'\n' | b'\r'));
        }
        let (start, block_len) = (self.len, block.len());
        self.append(block);
        if let Some(end) = found {
            let (cut, tail) = (start + end, block_len - end);
            // Enough for a chunk, or a record after the boundary already too long.
            if cut >= self.target || tail > self.max_record {
                self.cut = None;
                let parts = self.take(cut);
                return Some(Piece::Chunk(self.hand_out(parts)));
            }
            self.cut = Some(cut);
        }
        match self.cut {
            // A record growing too long after the last boundary: cut before it.
            Some(cut) if self.len - cut > self.max_record => {
                self.cut = None;
                let parts = self.take(cut);
                Some(Piece::Chunk(self.hand_out(parts)))
            }
            None if self.len > self.max_record => {
                self.skipping = true;
                let all = self.take(self.len);
                let mut head = BytesMut::new();
                for p in &all {
                    let room = super::MAX_RAW - head.len();
                    head.extend_from_slice(&p[..p.len().min(room)]);
                }
                Some(Piece::Overlong {
                    line: self.line,
                    head: head.freeze(),
                })
            }
            _ => None,
        }
    }

    /// The end of the file: what is left.
    pub fn finish(&mut self) -> Option<Piece> {
        if self.skipping || self.len == 0 {
            return None;
        }
        let parts = self.take(self.len);
        Some(Piece::Chunk(self.hand_out(parts)))
    }

    /// Keeps `block` after the bytes not yet handed out.
    fn append(&mut self, block: Bytes) {
        self.len += block.len();
        if block.len() < GATHER_BELOW {
            self.gather.extend_from_slice(&block);
        } else {
            self.seal();
            self.parts.push(block);
        }
    }

    /// Moves the gathered small blocks into `parts`.
    fn seal(&mut self) {
        if !self.gather.is_empty() {
            self.parts.push(self.gather.split().freeze());
        }
    }

    /// The first `n` bytes not yet handed out, as pieces (slices, not copies).
    fn take(&mut self, n: usize) -> Vec<Bytes> {
        self.seal();
        let mut out = Vec::new();
        let mut left = n;
        let mut rest = std::mem::take(&mut self.parts).into_iter();
        for mut p in rest.by_ref() {
            if left < p.len() {
                // The piece the cut falls in: its head goes, its tail stays.
                if left > 0 {
                    out.push(p.split_to(left));
                }
                self.parts.push(p);
                break;
            }
            left -= p.len();
            out.push(p);
            if left == 0 {
                break;
            }
        }
        self.parts.extend(rest);
        self.len -= n;
        out
    }

    fn hand_out(&mut self, parts: Vec<Bytes>) -> Chunk {
        let chunk = Chunk {
            parts,
            first_line: self.line,
            first: self.first,
        };
        self.line += chunk.newlines();
        self.first = false;
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk of `text` cut with a target of `target` bytes.
    fn chunks(text: &[u8], target: usize, feed: usize) -> Vec<Chunk> {
        let mut s = Splitter::new(
            Boundaries::Csv(CsvBoundaries::new(b',', b'"', None)),
            target,
            1 << 20,
        );
        let mut out = Vec::new();
        for piece in text.chunks(feed.max(1)) {
            if let Some(Piece::Chunk(c)) = s.push(Bytes::copy_from_slice(piece)) {
                out.push(c);
            }
        }
        if let Some(Piece::Chunk(c)) = s.finish() {
            out.push(c);
        }
        out
    }

    #[test]
    fn quoted_newlines_are_not_boundaries() {
        let text = b"a,b\n1,\"x\ny\"\n2,\"q\"\"\n\"\n3,z\"\n4,w\n";
        // The records, each with the line it starts on: inside a doubled quote is data, and a
        // quote inside an unquoted value opens nothing.
        let records = [
            (1, "a,b\n"),
            (2, "1,\"x\ny\"\n"),
            (4, "2,\"q\"\"\n\"\n"),
            (6, "3,z\"\n"),
            (7, "4,w\n"),
        ];
        let ends: Vec<usize> = records
            .iter()
            .scan(0, |end, (_, r)| {
                *end += r.len();
                Some(*end)
            })
            .collect();
        for feed in 1..text.len() {
            let got = chunks(text, 1, feed);
            // Fed a byte at a time, every record is a chunk.
            if feed == 1 {
                let want: Vec<(u64, String)> =
                    records.iter().map(|(l, r)| (*l, r.to_string())).collect();
                let cuts: Vec<(u64, String)> = got
                    .iter()
                    .map(|c| {
                        (
                            c.first_line,
                            String::from_utf8_lossy(&c.contiguous()).into_owned(),
                        )
                    })
                    .collect();
                assert_eq!(cuts, want);
            }
            // Otherwise chunks hold whole records, in order, and nothing else.
            let mut at = 0;
            for c in &got {
                let i = ends.iter().position(|e| *e == at).map_or(0, |i| i + 1);
                assert_eq!(c.first_line, records[i].0, "fed {feed}");
                at += c.len();
                assert!(ends.contains(&at), "fed {feed}: cut at {at}");
            }
            assert_eq!(at, text.len());
        }
    }

    #[test]
    fn an_unbalanced_quote_runs_to_the_end() {
        let text = b"1,\"open\n2,b\n3,c\n";
        let got = chunks(text, 1, 4);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].contiguous()[..], &text[..]);
    }

    #[test]
    fn an_overlong_record_is_reported_once_and_the_rest_dropped() {
        let mut s = Splitter::new(Boundaries::Csv(CsvBoundaries::new(b',', b'"', None)), 4, 10);
        let b = |s: &'static [u8]| Bytes::from_static(s);
        assert!(matches!(s.push(b(b"1,a\n")), Some(Piece::Chunk(_))));
        assert!(s.push(b(b"2,\"abc")).is_none());
        match s.push(b(b"defghijk\n3,x\n")) {
            Some(Piece::Overlong { line, head }) => {
                assert_eq!(line, 2);
                assert!(head.starts_with(b"2,\"abc"));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.push(b(b"4,y\n")).is_none());
        assert!(s.finish().is_none());
    }

    /// Files whose lines end with a bare `\r`, or with `\r\n`, are cut at their line ends
    /// like `\n` files, and each chunk knows the line it starts on, wherever the stream's
    /// blocks end (a `\r\n` split across two blocks is one line end).
    #[test]
    fn bare_cr_and_crlf_line_ends_are_boundaries_with_their_line_numbers() {
        for end in ["\r", "\r\n", "\n"] {
            let text: String = (1..=50)
                .map(|i| format!("{i},\"q{end}{i}\"{end}"))
                .collect();
            for feed in [1, 2, 3, 7, 64, 1 << 20] {
                let got = chunks(text.as_bytes(), 8, feed);
                // (At most one cut per block pushed: a cut at each block, then.)
                let blocks = text.len().div_ceil(feed);
                assert!(
                    got.len() >= blocks.min(50) / 3,
                    "{end:?}, fed {feed}: {} chunks",
                    got.len()
                );
                for c in &got {
                    let bytes = c.contiguous();
                    let first: String = String::from_utf8_lossy(&bytes)
                        .chars()
                        .take_while(|ch| ch.is_ascii_digit())
                        .collect();
                    // Record i starts on line 2i - 1: each holds one quoted line end.
                    let i: u64 = first.parse().unwrap();
                    assert_eq!(c.first_line, 2 * i - 1, "{end:?}, fed {feed}");
                }
            }
        }
    }

    /// Empty blocks between others change no cut: after a block that ends in a bare `\r`, the
    /// next non-empty block still says whether it ended a record.
    #[test]
    fn empty_blocks_change_no_cut() {
        for end in ["\r", "\r\n", "\n"] {
            let cuts = |empty: bool| {
                let mut s =
                    Splitter::new(Boundaries::Csv(CsvBoundaries::new(b',', b'"', None)), 1, 64);
                let mut got = Vec::new();
                for i in 0..10 {
                    let mut blocks = vec![Bytes::from(format!("r{i}{end}"))];
                    if empty {
                        blocks.push(Bytes::new());
                    }
                    for b in blocks {
                        match s.push(b) {
                            Some(Piece::Chunk(c)) => got.push((c.first_line, c.contiguous())),
                            Some(Piece::Overlong { line, .. }) => panic!("overlong at {line}"),
                            None => {}
                        }
                    }
                }
                if let Some(Piece::Chunk(c)) = s.finish() {
                    got.push((c.first_line, c.contiguous()));
                }
                got
            };
            let plain = cuts(false);
            assert!(plain.len() >= 9, "{end:?}: {plain:?}");
            assert_eq!(cuts(true), plain, "{end:?}");
        }
    }

    #[test]
    fn json_lines_cut_at_every_newline() {
        let mut s = Splitter::new(Boundaries::Lines, 5, 1 << 20);
        let mut got = Vec::new();
        for piece in [&b"{\"a\":1}\n{\"a\""[..], b":2}\n{\"a\":3}"] {
            if let Some(Piece::Chunk(c)) = s.push(Bytes::from_static(piece)) {
                got.push((c.first_line, c.contiguous()));
            }
        }
        if let Some(Piece::Chunk(c)) = s.finish() {
            got.push((c.first_line, c.contiguous()));
        }
        let got: Vec<(u64, &[u8])> = got.iter().map(|(l, b)| (*l, &b[..])).collect();
        assert_eq!(
            got,
            vec![
                (1, &b"{\"a\":1}\n"[..]),
                (2, &b"{\"a\":2}\n"[..]),
                (3, &b"{\"a\":3}"[..])
            ]
        );
    }
}
