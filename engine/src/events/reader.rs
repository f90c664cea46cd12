//! Reading the event log back (`sendctl log`): newest first across the
//! rotated files, a page at a time, and forward from a cursor for
//! `--follow`.
//!
//! The files are read in blocks from the end (`events.jsonl`, then `.1`,
//! `.2`, ...), so the newest page of a gigabyte costs one block, not the
//! gigabyte. A position in the log is a [`Cursor`]: the inode of a file and
//! a byte offset at a line boundary in it. Appending does not move old
//! bytes and rotating renames a file without changing its inode, so a
//! cursor keeps naming the same line while the log grows and rotates;
//! finding its file again is a `stat` of each of the few rotated files. (A
//! time and message id would also survive rotation, but finding them again
//! means scanning from the newest line: a page deep in the log would cost
//! everything above it, and the log is only nearly in time order.)
//!
//! Bounds: a line longer than `MAX_LINE_BYTES` is skipped, as is a line
//! that is not a JSON object (a torn last line after a crash; counted
//! where a line is looked at, not in blocks a filter passes over); a request
//! scans at most `Query::max_scan_bytes` and returns at most
//! `MAX_PAGE_BYTES`, then answers with what it has and a cursor to go on
//! from (`complete: false`). The caller runs it off the async workers.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::UNIX_EPOCH;

use serde_json::Value;

use super::file::numbered;
use super::filter::LogFilter;

/// Longest line read; longer ones are skipped (and counted).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Bytes of events one answer holds at most.
const MAX_PAGE_BYTES: usize = 16 << 20;
/// Bytes read from the file at a time.
const BLOCK_BYTES: usize = 256 << 10;
/// Rotated files looked for beyond `.1` (they are numbered without gaps).
const MAX_ROTATED_FILES: usize = 10_000;

/// A line boundary in one file of the log: `inode-offset` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub inode: u64,
    pub offset: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{:x}", self.inode, self.offset)
    }
}

impl FromStr for Cursor {
    type Err = ReadError;

    fn from_str(text: &str) -> Result<Cursor, ReadError> {
        let bad = || ReadError::BadCursor(text.to_owned());
        let (inode, offset) = text.split_once('-').ok_or_else(bad)?;
        Ok(Cursor {
            inode: u64::from_str_radix(inode, 16).map_err(|_| bad())?,
            offset: u64::from_str_radix(offset, 16).map_err(|_| bad())?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("`{0}` is not a cursor of the event log (give a `next` or `head` value as printed)")]
    BadCursor(String),
    #[error(
        "the cursor's file is no longer in the event log (rotated away or replaced); start again without the cursor"
    )]
    CursorGone,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What to read and how much work one request may do.
pub struct Query<'a> {
    pub filter: &'a LogFilter,
    /// Events wanted.
    pub limit: usize,
    /// Bytes of lines looked at, at most, before answering.
    pub max_scan_bytes: u64,
}

/// One answer.
#[derive(Debug, Default)]
pub struct Page {
    /// Newest first when reading backwards; oldest first when following.
    pub events: Vec<Value>,
    /// Reading backwards: where the next (older) page starts; `None` when
    /// nothing older is left (or nothing older can match `since`).
    pub next: Option<Cursor>,
    /// The end of the complete lines: where `--follow` goes on from. Set
    /// when reading from the newest line or following.
    pub head: Option<Cursor>,
    /// False when the scan budget or the page size ran out first: more
    /// may match; ask again from `next` (or `head`).
    pub complete: bool,
    pub scanned_bytes: u64,
    /// Lines skipped: not JSON objects (torn), or too long.
    pub skipped_lines: u64,
}

/// The newest matching events, or those before `before`; newest first.
pub fn read_backward(
    path: &Path,
    before: Option<Cursor>,
    query: &Query,
) -> Result<Page, ReadError> {
    let files = open_log(path)?;
    let mut page = Page::default();
    let mut take = Collector::new(query);
    let (first, mut end) = match before {
        None => (0, files.first().map(|f| f.len)),
        Some(cursor) => {
            let index = find(&files, &cursor)?;
            (index, Some(cursor.offset))
        }
    };
    for (index, file) in files.iter().enumerate().skip(first) {
        if query.filter.file_before_since(file.modified_ms) {
            break;
        }
        let scanned = scan_backward(file, end.take().unwrap_or(file.len), &mut take)?;
        if index == 0 && before.is_none() {
            page.head = Some(file.cursor(scanned.boundary));
        } else if scanned.tail_bytes > 0 {
            take.skipped += 1; // a torn line: it never got its newline
        }
        if let Some(offset) = scanned.stopped_at {
            if !take.past_since {
                page.next = Some(file.cursor(offset));
            }
            break;
        }
    }
    Ok(take.finish(page))
}

/// The matching events after `after`, oldest first, and the new head.
pub fn read_forward(path: &Path, after: Cursor, query: &Query) -> Result<Page, ReadError> {
    let files = open_log(path)?;
    let index = find(&files, &after)?;
    let mut page = Page::default();
    let mut take = Collector::new(query);
    let mut from = after.offset;
    for (n, file) in files[..=index].iter().enumerate().rev() {
        let scanned = scan_forward(file, from, &mut take)?;
        page.head = Some(file.cursor(scanned.boundary));
        if scanned.stopped {
            break;
        }
        if n > 0 && scanned.boundary < file.len {
            take.skipped += 1; // a rotated file ending in a torn line
        }
        from = 0;
    }
    Ok(take.finish(page))
}

/// Takes the lines a scan visits.
struct Collector<'a> {
    query: &'a Query<'a>,
    events: Vec<Value>,
    page_bytes: usize,
    scanned: u64,
    skipped: u64,
    /// Stopped at a line older than `since`: nothing older matches.
    past_since: bool,
    /// Stopped because the budget or the page size ran out.
    out_of_budget: bool,
}

impl<'a> Collector<'a> {
    fn new(query: &'a Query<'a>) -> Collector<'a> {
        Collector {
            query,
            events: Vec::new(),
            page_bytes: 0,
            scanned: 0,
            skipped: 0,
            past_since: false,
            out_of_budget: false,
        }
    }

    /// Looks at one complete line (`None`: one too long to hold); whether
    /// to stop after it.
    fn visit(&mut self, line: Option<&[u8]>, backward: bool, len: u64) -> Flow {
        self.scanned += len + 1;
        match line {
            None => self.skipped += 1,
            Some([]) => {}
            Some(line) if backward && self.query.filter.line_before_since(line) => {
                self.past_since = true;
                return Flow::Stop;
            }
            Some(line) => match self.query.filter.check(line) {
                Ok(Some(event)) => {
                    self.events.push(event);
                    self.page_bytes += line.len();
                }
                Ok(None) => {}
                Err(_) => self.skipped += 1,
            },
        }
        if self.events.len() >= self.query.limit {
            return Flow::Stop;
        }
        if self.scanned >= self.query.max_scan_bytes || self.page_bytes >= MAX_PAGE_BYTES {
            self.out_of_budget = true;
            return Flow::Stop;
        }
        Flow::Go
    }

    /// Passes over lines known not to match, `bytes` of them (not looked
    /// at: a torn line among them is not counted); whether to stop after.
    fn pass(&mut self, bytes: u64) -> Flow {
        self.scanned += bytes;
        if self.scanned >= self.query.max_scan_bytes {
            self.out_of_budget = true;
            return Flow::Stop;
        }
        Flow::Go
    }

    fn finish(self, mut page: Page) -> Page {
        page.complete = !self.out_of_budget;
        page.events = self.events;
        page.scanned_bytes = self.scanned;
        page.skipped_lines = self.skipped;
        page
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// One open file of the log, as it was when opened.
struct LogFile {
    path: PathBuf,
    file: File,
    inode: u64,
    len: u64,
    modified_ms: u64,
}

impl LogFile {
    fn cursor(&self, offset: u64) -> Cursor {
        Cursor {
            inode: self.inode,
            offset,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ReadError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| ReadError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// The log's files, newest first: the path, then `.1`, `.2`, ... until
/// one is missing. A file met twice (renamed by a rotation between two
/// opens) is kept once; open files stay readable if rotated away.
fn open_log(path: &Path) -> Result<Vec<LogFile>, ReadError> {
    let mut files: Vec<LogFile> = Vec::new();
    for n in 0..=MAX_ROTATED_FILES {
        let name = if n == 0 {
            path.to_owned()
        } else {
            numbered(path, n)
        };
        let io_error = |source| ReadError::Io {
            path: name.clone(),
            source,
        };
        let file = match File::open(&name) {
            Ok(file) => file,
            // No events yet, or the current file is being replaced.
            Err(e) if e.kind() == io::ErrorKind::NotFound && n == 0 => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(io_error(e)),
        };
        let meta = file.metadata().map_err(io_error)?;
        if !meta.is_file() || files.iter().any(|f| f.inode == meta.ino()) {
            continue;
        }
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            });
        files.push(LogFile {
            path: name,
            file,
            inode: meta.ino(),
            len: meta.len(),
            modified_ms,
        });
    }
    Ok(files)
}

/// The index of the cursor's file, after checking that the cursor is at
/// a line boundary in it.
fn find(files: &[LogFile], cursor: &Cursor) -> Result<usize, ReadError> {
    let index = files
        .iter()
        .position(|f| f.inode == cursor.inode)
        .ok_or(ReadError::CursorGone)?;
    let file = &files[index];
    if cursor.offset > file.len {
        return Err(ReadError::CursorGone);
    }
    if cursor.offset > 0 {
        let mut before = [0u8];
        file.read_at(&mut before, cursor.offset - 1)?;
        if before[0] != b'\n' {
            return Err(ReadError::CursorGone);
        }
    }
    Ok(index)
}

/// How a scan of one file ended.
struct Scanned {
    /// Offset of the line the scan stopped at (backward: its start).
    stopped_at: Option<u64>,
    /// The end of the last complete line below the scan's end.
    boundary: u64,
    /// Bytes after `boundary`: a line without its newline yet.
    tail_bytes: u64,
}

/// The line being put together from blocks: its bytes, unless it grew
/// past `MAX_LINE_BYTES`.
#[derive(Default)]
struct Partial {
    bytes: Vec<u8>,
    len: u64,
    too_long: bool,
}

impl Partial {
    fn add(&mut self, piece: &[u8], at_front: bool) {
        self.len += piece.len() as u64;
        if self.too_long || self.len > MAX_LINE_BYTES as u64 {
            self.too_long = true;
            self.bytes = Vec::new();
        } else if at_front {
            self.bytes.splice(0..0, piece.iter().copied());
        } else {
            self.bytes.extend_from_slice(piece);
        }
    }

    fn take(&mut self) -> (Option<Vec<u8>>, u64) {
        let done = std::mem::take(self);
        ((!done.too_long).then_some(done.bytes), done.len)
    }

    /// Completes the line with its last piece (`at_front`: its first)
    /// and hands it to `visit` (`None` when too long) with its length.
    /// A line that lies in one block, nearly every line, is not copied.
    fn whole<T>(
        &mut self,
        piece: &[u8],
        at_front: bool,
        visit: impl FnOnce(Option<&[u8]>, u64) -> T,
    ) -> T {
        if self.len == 0 {
            let fits = piece.len() <= MAX_LINE_BYTES;
            return visit(fits.then_some(piece), piece.len() as u64);
        }
        self.add(piece, at_front);
        let (bytes, len) = self.take();
        visit(bytes.as_deref(), len)
    }
}

/// Visits the complete lines of `file` before `end`, last first. The
/// bytes after the last newline before `end` are not a complete line
/// (being written, or torn): they are left out and reported as the tail.
fn scan_backward(file: &LogFile, end: u64, take: &mut Collector) -> Result<Scanned, ReadError> {
    let mut scan = Backward {
        scanned: Scanned {
            stopped_at: None,
            boundary: 0,
            tail_bytes: 0,
        },
        in_tail: true,
        line: Partial::default(),
    };
    let mut buf = vec![0u8; usize::try_from(end).map_or(BLOCK_BYTES, |e| e.min(BLOCK_BYTES))];
    let mut pos = end;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK_BYTES as u64);
        let block = &mut buf[..(pos - start) as usize];
        file.read_at(block, start)?;
        let mut upto = block.len();
        if let Some(inner) = lines_without_match(block, take.query.filter) {
            // The line ending the block (or the tail) as usual, then the
            // lines wholly inside at once.
            let (first, last) = inner;
            if scan.end_line(&block[last + 1..], start + last as u64 + 1, take) == Flow::Stop {
                return Ok(scan.scanned);
            }
            if take.pass((last - first) as u64) == Flow::Stop {
                scan.scanned.stopped_at = Some(start + first as u64 + 1);
                return Ok(scan.scanned);
            }
            upto = first;
        }
        while let Some(i) = memchr::memrchr(b'\n', &block[..upto]) {
            if scan.end_line(&block[i + 1..upto], start + i as u64 + 1, take) == Flow::Stop {
                return Ok(scan.scanned);
            }
            upto = i;
        }
        scan.line.add(&block[..upto], true);
        pos = start;
    }
    scan.end_line(&[], 0, take);
    Ok(scan.scanned)
}

/// The first and last newline of a block whose lines between them cannot
/// match: one of the filter's patterns is nowhere in the block (and its
/// oldest such line is not already past `since`). `None`: look at each.
/// This makes a rare filter cost one pattern search per block instead of
/// one per line.
fn lines_without_match(block: &[u8], filter: &LogFilter) -> Option<(usize, usize)> {
    if filter.may_match(block) {
        return None;
    }
    let first = memchr::memchr(b'\n', block)?;
    let last = memchr::memrchr(b'\n', block)?;
    let passable = first < last && !filter.line_before_since(&block[first + 1..]);
    passable.then_some((first, last))
}

/// The state of a backward scan of one file.
struct Backward {
    scanned: Scanned,
    /// The line being read is the part after the last newline.
    in_tail: bool,
    line: Partial,
}

impl Backward {
    /// The line starting at `start` is complete (`first` is its part in
    /// the current block, the rest came with later blocks): the tail, or
    /// one to visit.
    fn end_line(&mut self, first: &[u8], start: u64, take: &mut Collector) -> Flow {
        if std::mem::take(&mut self.in_tail) {
            self.line.add(first, true);
            self.scanned.boundary = start;
            self.scanned.tail_bytes = self.line.take().1;
            return Flow::Go;
        }
        let flow = self
            .line
            .whole(first, true, |line, len| take.visit(line, true, len));
        if flow == Flow::Stop {
            self.scanned.stopped_at = Some(start);
        }
        flow
    }
}

/// How a forward scan of one file ended.
struct Forward {
    /// The end of the last line consumed: where to go on from.
    boundary: u64,
    /// Stopped before the end of the file's complete lines.
    stopped: bool,
}

/// Visits the complete lines of `file` from `from` to its end, first
/// first; a last line without its newline is left for the next read.
fn scan_forward(file: &LogFile, from: u64, take: &mut Collector) -> Result<Forward, ReadError> {
    let mut buf = vec![0u8; BLOCK_BYTES];
    let mut line = Partial::default();
    let mut boundary = from;
    let mut pos = from;
    while pos < file.len {
        let n = usize::try_from(file.len - pos).map_or(BLOCK_BYTES, |left| left.min(BLOCK_BYTES));
        let block = &mut buf[..n];
        file.read_at(block, pos)?;
        let mut rest: &[u8] = block;
        let mut at = pos;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            at += i as u64 + 1;
            boundary = at;
            let flow = line.whole(&rest[..i], false, |line, len| take.visit(line, false, len));
            if flow == Flow::Stop {
                return Ok(Forward {
                    boundary,
                    stopped: true,
                });
            }
            rest = &rest[i + 1..];
        }
        line.add(rest, false);
        pos += n as u64;
    }
    Ok(Forward {
        boundary,
        stopped: false,
    })
}

#[cfg(test)]
mod tests;
