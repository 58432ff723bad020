//! ONC RPC record marking over TCP (RFC 5531 §11): a byte stream of records, each one or more
//! fragments behind a 4-byte mark (top bit: last fragment; the rest: the fragment's length).
//!
//! [`RecordReader`] splits a stream into whole records however it arrives — several fragments
//! per record, several records per segment, a record across many segments, a mark split across
//! segments — and refuses a record longer than its bound before buffering it (a mark claiming
//! 2^31 − 1 bytes costs nothing). [`frame`] writes one record as one fragment.

use thiserror::Error;

/// Why a stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The record (its fragments so far plus the next one) is longer than the bound.
    #[error("record of at least {0} bytes exceeds the bound")]
    TooLong(usize),
    /// A fragment of length zero that is not the last (it would let a peer spin the reader).
    #[error("empty fragment in the middle of a record")]
    EmptyFragment,
}

/// Splits a record-marked stream into records. Memory: at most `max` bytes of record plus a
/// partial mark.
#[derive(Debug)]
pub struct RecordReader {
    max: usize,
    /// The record being assembled (fragments so far).
    record: Vec<u8>,
    /// Bytes of a mark read so far.
    mark: [u8; 4],
    mark_len: usize,
    /// Bytes still to read of the current fragment, and whether it is the last.
    left: usize,
    last: bool,
    in_fragment: bool,
}

impl RecordReader {
    /// A reader taking records of up to `max` bytes.
    pub fn new(max: usize) -> Self {
        RecordReader {
            max,
            record: Vec::new(),
            mark: [0; 4],
            mark_len: 0,
            left: 0,
            last: false,
            in_fragment: false,
        }
    }

    /// Bytes of a record held (partial record: a peer that stops mid-record holds this much).
    pub fn buffered(&self) -> usize {
        self.record.len() + self.mark_len
    }

    /// Whether the reader is between records (nothing partial held).
    pub fn idle(&self) -> bool {
        !self.in_fragment && self.mark_len == 0 && self.record.is_empty()
    }

    /// Take `data`, handing each complete record to `on_record`. Returns how many bytes were
    /// consumed: all of `data` unless `on_record` returns false (stop: the caller has no room
    /// for more now), in which case the rest is for a later call. After an error the stream
    /// is unusable (close the connection).
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on_record: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<usize, RecordError> {
        let total = data.len();
        while !data.is_empty() {
            if !self.in_fragment {
                let take = (4 - self.mark_len).min(data.len());
                self.mark[self.mark_len..self.mark_len + take].copy_from_slice(&data[..take]);
                self.mark_len += take;
                data = &data[take..];
                if self.mark_len < 4 {
                    break;
                }
                self.mark_len = 0;
                let m = u32::from_be_bytes(self.mark);
                self.last = m & 0x8000_0000 != 0;
                self.left = (m & 0x7fff_ffff) as usize;
                let want = self.record.len().saturating_add(self.left);
                if want > self.max {
                    return Err(RecordError::TooLong(want));
                }
                if self.left == 0 && !self.last {
                    return Err(RecordError::EmptyFragment);
                }
                self.record.reserve(self.left);
                self.in_fragment = true;
            }
            let take = self.left.min(data.len());
            self.record.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.left -= take;
            if self.left == 0 {
                self.in_fragment = false;
                if self.last {
                    let rec = std::mem::take(&mut self.record);
                    if !on_record(rec) {
                        return Ok(total - data.len());
                    }
                }
            }
        }
        Ok(total - data.len())
    }
}

/// `msg` as one record of one fragment (mark + message).
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + msg.len());
    out.extend_from_slice(&(0x8000_0000 | msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(r: &mut RecordReader, data: &[u8]) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = Vec::new();
        let n = r.feed(data, |rec| {
            out.push(rec);
            true
        })?;
        assert_eq!(n, data.len());
        Ok(out)
    }

    /// `msg` in fragments of the given sizes (the last takes the rest).
    fn fragments(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = msg;
        for &s in sizes {
            if s >= rest.len() || s == 0 {
                break;
            }
            out.extend_from_slice(&(s as u32).to_be_bytes());
            out.extend_from_slice(&rest[..s]);
            rest = &rest[s..];
        }
        out.extend_from_slice(&(0x8000_0000 | rest.len() as u32).to_be_bytes());
        out.extend_from_slice(rest);
        out
    }

    #[test]
    fn several_records_in_one_segment_and_several_fragments_per_record() {
        let mut stream = frame(b"first");
        stream.extend(fragments(b"second record", &[3, 4]));
        stream.extend(frame(b""));
        let mut r = RecordReader::new(100);
        let got = all(&mut r, &stream).unwrap();
        assert_eq!(
            got,
            vec![b"first".to_vec(), b"second record".to_vec(), Vec::new()]
        );
        assert!(r.idle());
    }

    #[test]
    fn a_record_across_many_segments_and_a_split_mark() {
        let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let stream = fragments(&msg, &[100, 250]);
        let mut r = RecordReader::new(2000);
        let mut got = Vec::new();
        for byte in &stream {
            got.extend(all(&mut r, std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(got, vec![msg]);
    }

    #[test]
    fn an_oversized_claim_is_refused_before_anything_is_buffered() {
        let mut r = RecordReader::new(1 << 20);
        let e = all(&mut r, &0xffff_ffffu32.to_be_bytes()).unwrap_err();
        assert_eq!(e, RecordError::TooLong(0x7fff_ffff));
        assert_eq!(r.buffered(), 0);
        // Fragments adding up past the bound are refused too.
        let mut r = RecordReader::new(10);
        let e = all(&mut r, &fragments(&[0; 12], &[6])).unwrap_err();
        assert_eq!(e, RecordError::TooLong(12));
        let mut r = RecordReader::new(10);
        assert_eq!(
            all(&mut r, &0u32.to_be_bytes()).unwrap_err(),
            RecordError::EmptyFragment
        );
    }

    #[test]
    fn a_full_consumer_stops_the_reader_where_it_was() {
        let mut stream = frame(b"a");
        stream.extend(frame(b"b"));
        let mut r = RecordReader::new(10);
        let mut got = Vec::new();
        let n = r
            .feed(&stream, |rec| {
                got.push(rec);
                false
            })
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(got, vec![b"a".to_vec()]);
        assert_eq!(all(&mut r, &stream[n..]).unwrap(), vec![b"b".to_vec()]);
    }

    proptest! {
        #[test]
        fn any_split_of_any_fragmentation_gives_the_records_back(
            msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..5),
            sizes in prop::collection::vec(1usize..100, 0..4),
            cuts in prop::collection::vec(1usize..64, 1..20),
        ) {
            let mut stream = Vec::new();
            for m in &msgs {
                stream.extend(fragments(m, &sizes));
            }
            let mut r = RecordReader::new(300);
            let mut got = Vec::new();
            let mut rest = &stream[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                got.extend(all(&mut r, &rest[..n]).unwrap());
                rest = &rest[n..];
                i += 1;
            }
            prop_assert_eq!(got, msgs);
            prop_assert!(r.idle());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(data in prop::collection::vec(any::<u8>(), 0..2000)) {
            let mut r = RecordReader::new(512);
            let _ = r.feed(&data, |rec| { assert!(rec.len() <= 512); true });
            prop_assert!(r.buffered() <= 512 + 4);
        }
    }
}
