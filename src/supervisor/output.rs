//! Instance output: a bounded in-memory ring of recent bytes, and the instance log on disk
//! (`<log_dir>/instances/<id>.log`, rotated to `.log.1 .. .log.N` at a size cap).
//!
//! Every byte carries an absolute offset (bytes since the instance started), so a follower
//! can take a tail and then continue from live chunks without gaps or repeats, and a turn's
//! reply is the range of offsets between its message and its completion.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A chunk of output and the offset of its first byte.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub offset: u64,
    pub data: bytes::Bytes,
}

pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    /// Bytes ever pushed.
    total: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            buf: VecDeque::with_capacity(cap.min(64 * 1024)),
            cap,
            total: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Offset of the oldest byte still held.
    pub fn start(&self) -> u64 {
        self.total - self.buf.len() as u64
    }

    /// The last `max` bytes and the offset of the first of them.
    pub fn tail(&self, max: usize) -> (u64, Vec<u8>) {
        let n = max.min(self.buf.len());
        let skip = self.buf.len() - n;
        (
            self.total - n as u64,
            self.buf.range(skip..).copied().collect(),
        )
    }

    /// Bytes in `[from, to)` that are still held (clamped), and the offset actually returned.
    pub fn range(&self, from: u64, to: u64) -> (u64, Vec<u8>) {
        let from = from.max(self.start()).min(self.total);
        let to = to.max(from).min(self.total);
        let a = (from - self.start()) as usize;
        let b = (to - self.start()) as usize;
        (from, self.buf.range(a..b).copied().collect())
    }
}

/// Keeps the last `n` lines of `text` (a trailing newline does not count as a line).
pub fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// The instance log with size-capped rotation.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
    keep: u32,
}

impl LogFile {
    pub fn open(path: PathBuf, max: u64, keep: u32) -> io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            file: Some(file),
            size,
            max,
            keep,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.size + data.len() as u64 > self.max && self.size > 0 {
            self.rotate()?;
        }
        if let Some(f) = &mut self.file {
            f.write_all(data)?;
            self.size += data.len() as u64;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..self.keep).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// The last `max` bytes of an instance log, reading back through rotated files.
pub fn read_log_tail(path: &Path, keep: u32, max: usize) -> io::Result<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut need = max;
    let files = std::iter::once(path.to_path_buf()).chain((1..=keep).map(|i| rotated(path, i)));
    let mut found = false;
    for p in files {
        if need == 0 {
            break;
        }
        let mut f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        found = true;
        let len = f.metadata()?.len();
        let take = (need as u64).min(len);
        f.seek(SeekFrom::Start(len - take))?;
        let mut buf = Vec::with_capacity(take as usize);
        f.take(take).read_to_end(&mut buf)?;
        need -= buf.len();
        parts.push(buf);
    }
    if !found {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no log at {}", path.display()),
        ));
    }
    Ok(parts.into_iter().rev().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_bytes_with_offsets() {
        let mut r = Ring::new(8);
        r.push(b"hello");
        r.push(b" world");
        assert_eq!(r.total(), 11);
        assert_eq!(r.start(), 3);
        assert_eq!(r.tail(100), (3, b"lo world".to_vec()));
        assert_eq!(r.tail(3), (8, b"rld".to_vec()));
        assert_eq!(r.range(0, 6), (3, b"lo ".to_vec()));
        assert_eq!(r.range(6, 100), (6, b"world".to_vec()));
        r.push(&[b'x'; 20]);
        assert_eq!(r.total(), 31);
        assert_eq!(r.tail(100).1, vec![b'x'; 8]);
    }

    #[test]
    fn last_lines_counts_from_the_end() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(last_lines(b"a\nb", 5), b"a\nb");
        assert_eq!(last_lines(b"a\nb", 0), b"");
    }

    #[test]
    fn log_rotates_and_tail_reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let mut log = LogFile::open(p.clone(), 10, 2).unwrap();
        for chunk in [b"0123456".as_slice(), b"789ab", b"cdefgh", b"ijklmn"] {
            log.write(chunk).unwrap();
        }
        // x.log = ijklmn, x.log.1 = cdefgh, x.log.2 = 789ab; 0123456 rotated away
        assert_eq!(std::fs::read(&p).unwrap(), b"ijklmn");
        assert!(!rotated(&p, 3).exists());
        assert_eq!(read_log_tail(&p, 2, 100).unwrap(), b"789abcdefghijklmn");
        assert_eq!(read_log_tail(&p, 2, 8).unwrap(), b"ghijklmn");
        assert!(read_log_tail(&dir.path().join("none.log"), 2, 8).is_err());
    }
}

/// Removes terminal escape sequences (CSI, OSC, and two-byte escapes) and carriage returns
/// that precede a newline, for human- and model-readable output.
pub fn strip_ansi(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            0x1b => {
                i += 1;
                match input.get(i) {
                    Some(b'[') => {
                        i += 1;
                        while i < input.len() && !(0x40..=0x7e).contains(&input[i]) {
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(b']') | Some(b'P') | Some(b'_') => {
                        // OSC/DCS/APC: until BEL or ESC \
                        while i < input.len() {
                            if input[i] == 0x07 {
                                i += 1;
                                break;
                            }
                            if input[i] == 0x1b && input.get(i + 1) == Some(&b'\\') {
                                i += 2;
                                break;
                            }
                            i += 1;
                        }
                    }
                    Some(b'(') | Some(b')') => i += 2,
                    Some(_) => i += 1,
                    None => {}
                }
            }
            b'\r' if input.get(i + 1) == Some(&b'\n') => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod strip_tests {
    use super::strip_ansi;

    #[test]
    fn strips_escapes_keeps_text() {
        assert_eq!(strip_ansi(b"\x1b[1;31mred\x1b[0m ok\r\n"), b"red ok\n");
        assert_eq!(strip_ansi(b"\x1b]0;title\x07hi"), b"hi");
        assert_eq!(strip_ansi(b"a\x1b(Bb\x1b=c"), b"abc");
        assert_eq!(strip_ansi(b"plain"), b"plain");
    }
}
