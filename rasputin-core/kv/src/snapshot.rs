//! The snapshot format: a snapshot is a sequence of chunks, each one
//! checked on its own, so that it can be streamed, written and verified a
//! chunk at a time and no side ever holds the whole of it.
//!
//! Version 2. A chunk is the magic "RSNC", a u32 version, the snapshot's
//! applied index and term, the chunk's sequence number (from 0), a flags
//! byte (bit 0: the last chunk), then records, then a CRC-32 of every byte
//! before it. A record is a tag byte (1: a key and its value, 2: a client
//! id and its protobuf-encoded session, 3: the protobuf-encoded descriptor
//! of the range, from a store that holds one range of many, before any
//! other record) and its fields; byte strings are
//! prefixed with a u32 length. Integers are little-endian. Records come in
//! the order the daemon stores them: every value in key order, then every
//! session in client-id order.
//!
//! Version 1 was one unchunked buffer with a single checksum.

use thiserror::Error;

use rasputin_consensus::{LogIndex, Term};

use crate::wire::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// The largest chunk. A chunk holds at least one record, so this leaves
/// room for the largest: a full-size key with a full-size value, or a
/// session remembering a full-size value.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 2 << 20;
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;

const MAGIC: &[u8; 4] = b"RSNC";
const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8 + 1;
const CHECKSUM_BYTES: usize = 4;
const FLAG_LAST: u8 = 1;
const TAG_VALUE: u8 = 1;
const TAG_SESSION: u8 = 2;
const TAG_RANGE: u8 = 3;
const TAG_SPLIT_OUTCOME: u8 = 4;

const _: () = assert!(
    HEADER_BYTES + 1 + 4 + KEY_BYTES_MAX + 4 + VALUE_BYTES_MAX + CHECKSUM_BYTES <= SNAPSHOT_CHUNK_BYTES_MAX,
    "the largest record must fit in a chunk"
);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotDecodeError {
    #[error("snapshot chunk is {0} bytes, too short to be one; it is truncated or corrupt, fetch it again")]
    TooShort(usize),
    #[error("snapshot chunk is {0} bytes, over the limit of {SNAPSHOT_CHUNK_BYTES_MAX}; the sender is misbehaving")]
    TooLarge(usize),
    #[error("snapshot chunk does not start with the format's magic; it is corrupt or not a snapshot")]
    BadMagic,
    #[error("snapshot has format version {0}, but this build reads version {SNAPSHOT_FORMAT_VERSION}; run matching versions")]
    UnknownVersion(u32),
    #[error("snapshot chunk checksum mismatch (stored {stored:08x}, computed {computed:08x}); it is corrupt, fetch it again")]
    Checksum { stored: u32, computed: u32 },
    #[error("snapshot record at byte {0} of its chunk is malformed; the snapshot is corrupt, fetch it again")]
    Malformed(usize),
    #[error("a session in the snapshot does not decode; the snapshot is corrupt, fetch it again")]
    BadSession,
    #[error("the range descriptor in the snapshot does not decode; the snapshot is corrupt, fetch it again")]
    BadRange,
    #[error("the snapshot is of one range of many, and this server keeps every key in one range; upgrade every node to a version with ranges")]
    RangesUnsupported,
    #[error("snapshot chunk {found} arrived where chunk {expected} belongs; the snapshot is incomplete")]
    OutOfOrder { expected: u64, found: u64 },
    #[error("snapshot chunk {sequence} is of the snapshot at {found:?} (index, term), not {expected:?}; the chunks are of two snapshots")]
    PositionChanged { sequence: u64, expected: (LogIndex, Term), found: (LogIndex, Term) },
    #[error("the snapshot ends without its last chunk; it is truncated, fetch it again")]
    Unfinished,
}

/// One record of a snapshot, borrowed from its chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Value {
        key: &'a [u8],
        value: &'a [u8],
    },
    Session {
        client_id: u64,
        session: &'a [u8],
    },
    /// The protobuf-encoded descriptor of the range the snapshot is of.
    Range {
        descriptor: &'a [u8],
    },
    /// The protobuf-encoded `MetaUpdate` of the range's last split: the
    /// descriptors it produced, which the meta range must come to hold.
    SplitOutcome {
        update: &'a [u8],
    },
}

impl Record<'_> {
    /// The bytes this record takes in a chunk.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            Record::Value { key, value } => 1 + 4 + key.len() + 4 + value.len(),
            Record::Session { session, .. } => 1 + 8 + 4 + session.len(),
            Record::Range { descriptor } => 1 + 4 + descriptor.len(),
            Record::SplitOutcome { update } => 1 + 4 + update.len(),
        }
    }
}

/// Builds one chunk record by record.
pub struct ChunkWriter {
    out: Vec<u8>,
}

impl ChunkWriter {
    pub fn new(applied_index: LogIndex, applied_term: Term, sequence: u64) -> ChunkWriter {
        let mut out = Vec::with_capacity(HEADER_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&applied_index.to_le_bytes());
        out.extend_from_slice(&applied_term.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.push(0);
        ChunkWriter { out }
    }

    /// Whether `record` fits without the chunk passing SNAPSHOT_CHUNK_BYTES_MAX.
    /// An empty chunk takes any record a client could have written.
    pub fn fits(&self, record: &Record) -> bool {
        self.out.len() + record.encoded_bytes() + CHECKSUM_BYTES <= SNAPSHOT_CHUNK_BYTES_MAX
    }

    pub fn push(&mut self, record: &Record) {
        assert!(
            self.fits(record),
            "a {}-byte record overflows a chunk of {} bytes",
            record.encoded_bytes(),
            self.len()
        );
        match record {
            Record::Value { key, value } => {
                self.out.push(TAG_VALUE);
                put_bytes(&mut self.out, key);
                put_bytes(&mut self.out, value);
            }
            Record::Session { client_id, session } => {
                self.out.push(TAG_SESSION);
                self.out.extend_from_slice(&client_id.to_le_bytes());
                put_bytes(&mut self.out, session);
            }
            Record::Range { descriptor } => {
                self.out.push(TAG_RANGE);
                put_bytes(&mut self.out, descriptor);
            }
            Record::SplitOutcome { update } => {
                self.out.push(TAG_SPLIT_OUTCOME);
                put_bytes(&mut self.out, update);
            }
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.out.len() == HEADER_BYTES
    }

    pub fn finish(mut self, last: bool) -> Vec<u8> {
        if last {
            self.out[HEADER_BYTES - 1] = FLAG_LAST;
        }
        let checksum = crc32fast::hash(&self.out);
        self.out.extend_from_slice(&checksum.to_le_bytes());
        self.out
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("a record's field fits in a chunk, so its length in a u32");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A chunk whose size, header and checksum have been checked.
#[derive(Debug)]
pub struct ChunkReader<'a> {
    pub applied_index: LogIndex,
    pub applied_term: Term,
    pub sequence: u64,
    pub last: bool,
    body: &'a [u8],
}

impl<'a> ChunkReader<'a> {
    /// Checks the size, the magic, the version and the checksum before
    /// anything else is read.
    pub fn new(bytes: &'a [u8]) -> Result<ChunkReader<'a>, SnapshotDecodeError> {
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
            return Err(SnapshotDecodeError::TooShort(bytes.len()));
        }
        if bytes.len() > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(SnapshotDecodeError::TooLarge(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(SnapshotDecodeError::BadMagic);
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotDecodeError::UnknownVersion(version));
        }
        let (covered, stored) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(SnapshotDecodeError::Checksum { stored, computed });
        }
        let number = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(ChunkReader {
            applied_index: number(8),
            applied_term: number(16),
            sequence: number(24),
            last: bytes[HEADER_BYTES - 1] & FLAG_LAST != 0,
            body: &covered[HEADER_BYTES..],
        })
    }

    pub fn position(&self) -> (LogIndex, Term) {
        (self.applied_index, self.applied_term)
    }

    pub fn records(&self) -> Records<'a> {
        Records { body: self.body, position: 0, failed: false }
    }
}

pub struct Records<'a> {
    body: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> Records<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], SnapshotDecodeError> {
        let end = self.position.checked_add(count).filter(|&end| end <= self.body.len());
        let end = end.ok_or(SnapshotDecodeError::Malformed(HEADER_BYTES + self.position))?;
        let slice = &self.body[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, SnapshotDecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("took exactly 8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], SnapshotDecodeError> {
        let length = u32::from_le_bytes(self.take(4)?.try_into().expect("took exactly 4 bytes"));
        self.take(length as usize)
    }

    fn next_record(&mut self) -> Result<Record<'a>, SnapshotDecodeError> {
        let at = HEADER_BYTES + self.position;
        match self.take(1)?[0] {
            TAG_VALUE => Ok(Record::Value { key: self.bytes()?, value: self.bytes()? }),
            TAG_SESSION => Ok(Record::Session { client_id: self.u64()?, session: self.bytes()? }),
            TAG_RANGE => Ok(Record::Range { descriptor: self.bytes()? }),
            TAG_SPLIT_OUTCOME => Ok(Record::SplitOutcome { update: self.bytes()? }),
            _ => Err(SnapshotDecodeError::Malformed(at)),
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, SnapshotDecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position == self.body.len() {
            return None;
        }
        let record = self.next_record();
        self.failed = record.is_err();
        Some(record)
    }
}

/// Checks that `chunk` comes next in a stream whose first chunk is at
/// `position`, when `expected` chunks have been taken.
pub fn check_next(chunk: &ChunkReader, position: (LogIndex, Term), expected: u64) -> Result<(), SnapshotDecodeError> {
    if chunk.sequence != expected {
        return Err(SnapshotDecodeError::OutOfOrder { expected, found: chunk.sequence });
    }
    if chunk.position() != position {
        return Err(SnapshotDecodeError::PositionChanged {
            sequence: chunk.sequence,
            expected: position,
            found: chunk.position(),
        });
    }
    Ok(())
}

/// Cuts records into chunks as they come, for a snapshot built whole in
/// memory (the simulator's); the daemon streams chunks instead.
pub struct Chunker {
    position: (LogIndex, Term),
    current: ChunkWriter,
    chunks: Vec<Vec<u8>>,
}

impl Chunker {
    pub fn new(applied_index: LogIndex, applied_term: Term) -> Chunker {
        let position = (applied_index, applied_term);
        Chunker { position, current: ChunkWriter::new(applied_index, applied_term, 0), chunks: Vec::new() }
    }

    pub fn push(&mut self, record: &Record) {
        if !self.current.fits(record) {
            let sequence = self.chunks.len() as u64 + 1;
            let full =
                std::mem::replace(&mut self.current, ChunkWriter::new(self.position.0, self.position.1, sequence));
            self.chunks.push(full.finish(false));
        }
        self.current.push(record);
    }

    /// The snapshot as one buffer: each chunk after its u32 length.
    pub fn finish(mut self) -> Vec<u8> {
        self.chunks.push(self.current.finish(true));
        let mut out = Vec::with_capacity(self.chunks.iter().map(|chunk| 4 + chunk.len()).sum());
        for chunk in &self.chunks {
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// The chunks of a snapshot that `Chunker::finish` wrote, each checked,
/// in order, and ending with the last one.
pub fn split(mut bytes: &[u8]) -> Result<Vec<ChunkReader<'_>>, SnapshotDecodeError> {
    let mut chunks: Vec<ChunkReader> = Vec::new();
    while !bytes.is_empty() {
        let Some((length, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(SnapshotDecodeError::TooShort(bytes.len()));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            return Err(SnapshotDecodeError::TooShort(rest.len()));
        }
        let chunk = ChunkReader::new(&rest[..length])?;
        if let Some(first) = chunks.first() {
            check_next(&chunk, first.position(), chunks.len() as u64)?;
        } else {
            check_next(&chunk, chunk.position(), 0)?;
        }
        if chunks.last().is_some_and(|previous| previous.last) {
            return Err(SnapshotDecodeError::Malformed(0));
        }
        chunks.push(chunk);
        bytes = &rest[length..];
    }
    if !chunks.last().is_some_and(|chunk| chunk.last) {
        return Err(SnapshotDecodeError::Unfinished);
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records_of(chunk: &ChunkReader) -> Vec<(Vec<u8>, Vec<u8>)> {
        chunk
            .records()
            .map(|record| match record.unwrap() {
                Record::Value { key, value } => (key.to_vec(), value.to_vec()),
                Record::Session { client_id, session } => (client_id.to_le_bytes().to_vec(), session.to_vec()),
                Record::Range { descriptor } => (b"range".to_vec(), descriptor.to_vec()),
                Record::SplitOutcome { update } => (b"split".to_vec(), update.to_vec()),
            })
            .collect()
    }

    #[test]
    fn a_chunk_round_trips_with_its_header() {
        let mut writer = ChunkWriter::new(7, 3, 5);
        writer.push(&Record::Value { key: b"k", value: b"v" });
        writer.push(&Record::Session { client_id: 9, session: b"s" });
        let bytes = writer.finish(true);
        let chunk = ChunkReader::new(&bytes).unwrap();
        assert_eq!((chunk.position(), chunk.sequence, chunk.last), ((7, 3), 5, true));
        assert_eq!(
            records_of(&chunk),
            vec![(b"k".to_vec(), b"v".to_vec()), (9u64.to_le_bytes().to_vec(), b"s".to_vec())]
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_caught() {
        let mut writer = ChunkWriter::new(1, 1, 0);
        writer.push(&Record::Value { key: b"key", value: b"value" });
        let bytes = writer.finish(false);
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(ChunkReader::new(&flipped).is_err(), "a flipped bit at byte {at} went unnoticed");
        }
        for length in 0..bytes.len() {
            assert!(ChunkReader::new(&bytes[..length]).is_err(), "a chunk cut to {length} bytes was read");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 1;
        assert_eq!(ChunkReader::new(&wrong_version).unwrap_err(), SnapshotDecodeError::UnknownVersion(1));
    }

    #[test]
    fn a_record_with_a_length_past_its_chunk_is_malformed() {
        let mut writer = ChunkWriter::new(1, 1, 0);
        writer.push(&Record::Value { key: b"key", value: b"value" });
        let mut bytes = writer.finish(false);
        bytes.truncate(bytes.len() - CHECKSUM_BYTES);
        bytes[HEADER_BYTES + 1] = 0xff;
        let checksum = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        let chunk = ChunkReader::new(&bytes).unwrap();
        assert_eq!(
            chunk.records().collect::<Vec<_>>(),
            vec![Err(SnapshotDecodeError::Malformed(HEADER_BYTES + 1 + 4))]
        );
    }

    #[test]
    fn the_largest_records_are_cut_into_chunks_within_the_limit() {
        let value = vec![1u8; VALUE_BYTES_MAX];
        let key = vec![2u8; KEY_BYTES_MAX];
        let mut chunker = Chunker::new(4, 2);
        for _ in 0..5 {
            chunker.push(&Record::Value { key: &key, value: &value });
        }
        let bytes = chunker.finish();
        let chunks = split(&bytes).unwrap();
        assert_eq!(chunks.len(), 5, "one full-size record per chunk");
        assert!(chunks.iter().all(|chunk| chunk.records().count() == 1));
        assert!(chunks.last().unwrap().last && !chunks[0].last);
    }

    #[test]
    fn split_refuses_missing_reordered_and_mixed_chunks() {
        let chunk = |index, sequence, last| {
            let mut writer = ChunkWriter::new(index, 1, sequence);
            writer.push(&Record::Value { key: b"k", value: b"v" });
            writer.finish(last)
        };
        let join = |chunks: &[Vec<u8>]| {
            chunks
                .iter()
                .flat_map(|chunk| [(chunk.len() as u32).to_le_bytes().to_vec(), chunk.clone()].concat())
                .collect::<Vec<u8>>()
        };
        assert!(split(&join(&[chunk(5, 0, false), chunk(5, 1, true)])).is_ok());
        assert_eq!(split(&join(&[chunk(5, 0, false)])).unwrap_err(), SnapshotDecodeError::Unfinished);
        assert_eq!(
            split(&join(&[chunk(5, 1, true)])).unwrap_err(),
            SnapshotDecodeError::OutOfOrder { expected: 0, found: 1 }
        );
        assert!(matches!(
            split(&join(&[chunk(5, 0, false), chunk(6, 1, true)])).unwrap_err(),
            SnapshotDecodeError::PositionChanged { .. }
        ));
        assert_eq!(split(&[]).unwrap_err(), SnapshotDecodeError::Unfinished);
    }
}
