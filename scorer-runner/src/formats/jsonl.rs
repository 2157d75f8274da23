//! Line splitting with a bound on line length, so one huge or newline-less record cannot take
//! the worker's memory.

use std::io::{BufRead, BufReader, Read};

use super::{Batch, RawRecord, ReadOptions};
use crate::error::{Error, Result};

pub struct JsonlLines {
    reader: BufReader<Box<dyn Read + Send>>,
    options: ReadOptions,
    next_index: u64,
    done: bool,
}

impl JsonlLines {
    pub fn new(reader: Box<dyn Read + Send>, options: ReadOptions) -> Self {
        JsonlLines { reader: BufReader::with_capacity(1 << 20, reader), options, next_index: 0, done: false }
    }

    /// Reads the next line into `line`; returns false at end of input. A line longer than the
    /// limit is consumed but not kept, and reported as oversized.
    fn read_line(&mut self, uri: &str, line: &mut Vec<u8>) -> Result<Option<bool>> {
        line.clear();
        let mut oversized = false;
        let mut any = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Shard { uri: uri.into(), message: e.to_string() }),
            };
            if available.is_empty() {
                return Ok(any.then_some(oversized));
            }
            any = true;
            let (chunk, found) = match memchr::memchr(b'\n', available) {
                Some(pos) => (&available[..pos], Some(pos)),
                None => (available, None),
            };
            if !oversized {
                if line.len() + chunk.len() > self.options.max_record_bytes {
                    oversized = true;
                    line.clear();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let consumed = found.map_or(chunk.len(), |pos| pos + 1);
            self.reader.consume(consumed);
            if found.is_some() {
                return Ok(Some(oversized));
            }
        }
    }

    /// The next batch of non-blank lines, or `None` at the end of the shard.
    pub fn next_batch(&mut self, uri: &str) -> Result<Option<Batch>> {
        if self.done {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(self.options.batch_size);
        let mut line = Vec::new();
        while records.len() < self.options.batch_size {
            let Some(oversized) = self.read_line(uri, &mut line)? else {
                self.done = true;
                break;
            };
            let index = self.next_index;
            self.next_index += 1;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !oversized && line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            records.push(RawRecord { index, bytes: std::mem::take(&mut line), oversized });
        }
        Ok((!records.is_empty()).then_some(Batch { records, arrow: None }))
    }
}
