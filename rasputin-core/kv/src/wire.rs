//! The wire protocol: length-prefixed protobuf frames, the handshake, and
//! conversions between protobuf messages and the consensus types.
//! Sans-IO: it turns bytes into messages and back, and never touches a socket.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::meta;
use crate::operation::{ClientRequest, Entry, EntryPayload, Envelope, Message, Operation};
use crate::range::{DescriptorError, RangeDescriptor, RangeId, FIRST_RANGE_ID};
use crate::scan::{KeyValue, ScanPage, SCAN_PAGE_BYTES_MAX, SCAN_PAIR_OVERHEAD_BYTES};
use rasputin_consensus as consensus;
use rasputin_consensus::{LogIndex, MessageError, NodeId, RejectHint, Term};

/// The generated protobuf types (`proto/rasputin.proto`).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/rasputin.wire.rs"));
}

pub use proto::ErrorCode;

/// Bumped on any incompatible change to the protocol.
pub const PROTOCOL_VERSION: u32 = 2;

/// A peer that hosts many ranges: it takes messages whose `range_id` is
/// not the first range's. A daemon from before ranges closes a connection
/// that carries one, so a node sends it only the first range's messages,
/// and a mixed cluster keeps its first range running through an upgrade.
pub const FEATURE_RANGES: u32 = 1;
/// Bytes in the length prefix of a frame.
pub const FRAME_HEADER_BYTES: usize = 4;
/// The largest key a client may write.
pub const KEY_BYTES_MAX: usize = 4 << 10;
/// The largest value a client may write (also bounds cas's expected value).
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Room in a client frame for everything but keys and values: ids, tags,
/// lengths and the collection's name.
pub const REQUEST_OVERHEAD_BYTES_MAX: usize = 4 << 10;
/// The largest frame a client may send or receive: it holds the largest
/// request, a cas with a key and two values each at their limits.
pub const CLIENT_FRAME_BYTES_MAX: usize = KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX + REQUEST_OVERHEAD_BYTES_MAX;
/// The largest frame between peers. It holds the largest append (about
/// APPEND_BYTES_MAX, plus one entry that may pass it, each entry with its
/// overhead) and a snapshot chunk; snapshots stream, so no frame holds one.
pub const PEER_FRAME_BYTES_MAX: usize = 16 << 20;
const _: () = assert!(
    PEER_FRAME_BYTES_MAX
        >= consensus::APPEND_BYTES_MAX
            + CLIENT_FRAME_BYTES_MAX
            + consensus::APPEND_ENTRIES_COUNT_MAX * REQUEST_OVERHEAD_BYTES_MAX
);
const _: () = assert!(PEER_FRAME_BYTES_MAX >= crate::snapshot::SNAPSHOT_CHUNK_BYTES_MAX + REQUEST_OVERHEAD_BYTES_MAX);
// A scan's page, with the largest pair it may hold alone and its resume key, fits in a client frame.
const _: () = assert!(
    max(SCAN_PAGE_BYTES_MAX, KEY_BYTES_MAX + VALUE_BYTES_MAX + SCAN_PAIR_OVERHEAD_BYTES)
        + KEY_BYTES_MAX
        + REQUEST_OVERHEAD_BYTES_MAX
        <= CLIENT_FRAME_BYTES_MAX
);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}
/// The largest frame before a handshake completes: a Hello or its reply.
/// Bytes from an unknown sender never get more room than this.
pub const HELLO_FRAME_BYTES_MAX: usize = 4 << 10;
/// The collection every request names for now.
pub const DEFAULT_COLLECTION: &str = "kv";
/// The first range's id on the wire: 0, as daemons and clients from
/// before ranges send it.
pub const DEFAULT_RANGE_ID: u64 = 0;

/// The range a wire id names: 0 is the first range.
pub fn range_from_wire(wire_id: u64) -> RangeId {
    if wire_id == DEFAULT_RANGE_ID {
        FIRST_RANGE_ID
    } else {
        wire_id
    }
}

/// The wire id of `range`: 0 for the first range, so that a daemon from
/// before ranges takes it.
pub fn range_to_wire(range: RangeId) -> u64 {
    if range == FIRST_RANGE_ID {
        DEFAULT_RANGE_ID
    } else {
        range
    }
}

#[derive(Debug, Error)]
pub enum WireError {
    #[error("frame of {length} bytes exceeds the limit of {max} bytes; the peer is misbehaving or misconfigured")]
    FrameTooLarge { length: usize, max: usize },
    #[error("frame does not decode as {expected}: {source}; the peer sent garbage or speaks another protocol")]
    Decode { expected: &'static str, source: prost::DecodeError },
    #[error("{message} is missing its required field {field}")]
    MissingField { message: &'static str, field: &'static str },
    #[error("peer speaks protocol version {theirs}, this node speaks {ours}; upgrade the older side")]
    IncompatibleVersion { theirs: u32, ours: u32 },
    #[error("peer message refused: {0}")]
    Invalid(#[from] MessageError),
    #[error("an entry carries a malformed range descriptor: {0}; the peer is broken or hostile")]
    BadDescriptor(DescriptorError),
    #[error("{message}'s {field} disagree; the peer is broken or hostile")]
    Mismatched { message: &'static str, field: &'static str },
}

/// Appends `message` to `out` as one frame.
pub fn encode_frame(message: &impl prost::Message, out: &mut BytesMut) {
    let length = message.encoded_len();
    out.reserve(FRAME_HEADER_BYTES + length);
    out.put_u32(length as u32);
    message.encode(out).expect("BytesMut grows as needed");
}

/// Takes one complete frame's body off the front of `buffer`, if one is
/// there. The length is checked against `max_bytes` as soon as the header
/// is in. Nothing is reserved for the declared length: the buffer grows
/// only as bytes arrive, so a sender must send what it claims.
pub fn take_frame(buffer: &mut BytesMut, max_bytes: usize) -> Result<Option<Bytes>, WireError> {
    if buffer.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let length = u32::from_be_bytes(buffer[..FRAME_HEADER_BYTES].try_into().expect("4 bytes")) as usize;
    if length > max_bytes {
        return Err(WireError::FrameTooLarge { length, max: max_bytes });
    }
    if buffer.len() < FRAME_HEADER_BYTES + length {
        return Ok(None);
    }
    buffer.advance(FRAME_HEADER_BYTES);
    Ok(Some(buffer.split_to(length).freeze()))
}

pub fn decode<M: prost::Message + Default>(frame: Bytes, expected: &'static str) -> Result<M, WireError> {
    M::decode(frame).map_err(|source| WireError::Decode { expected, source })
}

/// Checks a Hello's version; the caller answers with the result.
pub fn check_version(hello: &proto::Hello) -> Result<(), WireError> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(WireError::IncompatibleVersion { theirs: hello.protocol_version, ours: PROTOCOL_VERSION });
    }
    Ok(())
}

// ----- operations -----

fn operation_to_proto(operation: &Operation) -> proto::client_request::Operation {
    use proto::client_request::Operation as Wire;
    match operation {
        Operation::Set { key, value } => Wire::Set(proto::Set { key: key.clone(), value: value.clone() }),
        Operation::Get { key } => Wire::Get(proto::Get { key: key.clone() }),
        Operation::Cas { key, expected, new } => {
            Wire::Cas(proto::Cas { key: key.clone(), expected: expected.clone(), new: new.clone() })
        }
        Operation::Del { key } => Wire::Del(proto::Del { key: key.clone() }),
        Operation::OpenSession => Wire::OpenSession(proto::OpenSession {}),
        Operation::Split { key, right_range, version } => {
            Wire::Split(proto::Split { key: key.clone(), right_range: *right_range, version: *version })
        }
        Operation::Scan { start, end, limit } => Wire::Scan(proto::Scan {
            start: start.clone(),
            has_end: end.is_some(),
            end: end.clone().unwrap_or_default(),
            limit: *limit,
        }),
        Operation::MetaUpdate { descriptors } => Wire::MetaUpdate(proto::MetaUpdate {
            descriptors: descriptors.iter().map(RangeDescriptor::to_proto).collect(),
        }),
        Operation::MetaLookup { key, limit } => Wire::MetaLookup(proto::MetaLookup { key: key.clone(), limit: *limit }),
    }
}

fn operation_from_proto(operation: proto::client_request::Operation) -> Result<Operation, DescriptorError> {
    use proto::client_request::Operation as Wire;
    Ok(match operation {
        Wire::Set(set) => Operation::Set { key: set.key, value: set.value },
        Wire::Get(get) => Operation::Get { key: get.key },
        Wire::Cas(cas) => Operation::Cas { key: cas.key, expected: cas.expected, new: cas.new },
        Wire::Del(del) => Operation::Del { key: del.key },
        Wire::OpenSession(_) => Operation::OpenSession,
        Wire::Split(split) => {
            Operation::Split { key: split.key, right_range: split.right_range, version: split.version }
        }
        Wire::Scan(scan) => {
            Operation::Scan { start: scan.start, end: scan.has_end.then_some(scan.end), limit: scan.limit }
        }
        Wire::MetaUpdate(update) => Operation::MetaUpdate {
            descriptors: update.descriptors.into_iter().map(RangeDescriptor::from_proto).collect::<Result<_, _>>()?,
        },
        Wire::MetaLookup(lookup) => Operation::MetaLookup { key: lookup.key, limit: lookup.limit },
    })
}

/// Why a client request is refused before it reaches consensus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request has no operation")]
    NoOperation,
    #[error("unknown collection {0:?}; the only collection is \"kv\"")]
    UnknownCollection(String),
    #[error("key of {0} bytes exceeds the limit of {KEY_BYTES_MAX} bytes")]
    KeyTooLarge(usize),
    #[error("value of {0} bytes exceeds the limit of {VALUE_BYTES_MAX} bytes")]
    ValueTooLarge(usize),
    #[error("a request of {0} bytes exceeds the frame limit of {CLIENT_FRAME_BYTES_MAX} bytes")]
    RequestTooLarge(usize),
    #[error("a write needs a session's non-zero client_id and a non-zero sequence, a read a non-zero sequence (got {client_id}, {sequence}); open a session first and number its requests from 1")]
    NoSession { client_id: u64, sequence: u64 },
    #[error("an OpenSession, Split or MetaUpdate request must carry client_id 0 and a non-zero nonce as its sequence (got {client_id}, {sequence})")]
    MalformedOpen { client_id: u64, sequence: u64 },
    #[error("the request carries a malformed range descriptor: {0}")]
    BadDescriptor(#[from] DescriptorError),
}

impl RequestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::NoOperation
            | RequestError::NoSession { .. }
            | RequestError::MalformedOpen { .. }
            | RequestError::BadDescriptor(_) => ErrorCode::BadRequest,
            RequestError::UnknownCollection(_) => ErrorCode::UnknownCollection,
            RequestError::KeyTooLarge(_) | RequestError::ValueTooLarge(_) | RequestError::RequestTooLarge(_) => {
                ErrorCode::ValueTooLarge
            }
        }
    }
}

pub fn client_request_to_proto(request_id: u64, request: &ClientRequest) -> proto::ClientRequest {
    proto::ClientRequest {
        request_id,
        client_id: request.client_id,
        sequence: request.sequence,
        range_id: DEFAULT_RANGE_ID,
        collection: DEFAULT_COLLECTION.to_string(),
        operation: Some(operation_to_proto(&request.operation)),
        status: None,
        transfer_leadership: None,
        epoch: None,
    }
}

/// Validates a client request and converts it for consensus.
pub fn client_request_from_proto(request: proto::ClientRequest) -> Result<ClientRequest, RequestError> {
    if !request.collection.is_empty() && request.collection != DEFAULT_COLLECTION {
        return Err(RequestError::UnknownCollection(request.collection));
    }
    let operation = operation_from_proto(request.operation.ok_or(RequestError::NoOperation)?)?;
    let (client_id, sequence) = (request.client_id, request.sequence);
    match operation {
        Operation::OpenSession | Operation::Split { .. } | Operation::MetaUpdate { .. }
            if client_id != 0 || sequence == 0 =>
        {
            return Err(RequestError::MalformedOpen { client_id, sequence })
        }
        Operation::OpenSession | Operation::Split { .. } | Operation::MetaUpdate { .. } => {}
        // A read needs no session, only an id for its answer: a random nonce will do.
        Operation::Get { .. } | Operation::Scan { .. } | Operation::MetaLookup { .. } if sequence == 0 => {
            return Err(RequestError::NoSession { client_id, sequence })
        }
        Operation::Get { .. } | Operation::Scan { .. } | Operation::MetaLookup { .. } => {}
        _ if client_id == 0 || sequence == 0 => return Err(RequestError::NoSession { client_id, sequence }),
        _ => {}
    }
    let key_bytes = match &operation {
        Operation::Scan { start, end, .. } => start.len().max(end.as_ref().map_or(0, Bytes::len)),
        operation => operation.key().len(),
    };
    if key_bytes > KEY_BYTES_MAX {
        return Err(RequestError::KeyTooLarge(key_bytes));
    }
    let value_bytes = match &operation {
        Operation::Set { value, .. } => value.len(),
        Operation::Cas { expected, new, .. } => expected.len().max(new.len()),
        Operation::Get { .. }
        | Operation::Del { .. }
        | Operation::OpenSession
        | Operation::Split { .. }
        | Operation::Scan { .. }
        | Operation::MetaUpdate { .. }
        | Operation::MetaLookup { .. } => 0,
    };
    if value_bytes > VALUE_BYTES_MAX {
        return Err(RequestError::ValueTooLarge(value_bytes));
    }
    Ok(ClientRequest { client_id, sequence, operation })
}

/// Checks that `request` fits in one client frame, so that a server never
/// has to close a shared connection over it.
pub fn check_request_frame(request: &proto::ClientRequest) -> Result<(), RequestError> {
    let bytes = FRAME_HEADER_BYTES + prost::Message::encoded_len(request);
    if bytes > CLIENT_FRAME_BYTES_MAX {
        return Err(RequestError::RequestTooLarge(bytes));
    }
    Ok(())
}

/// A scan page's answer to the request `request_id`.
pub fn scan_page_to_proto(request_id: u64, page: ScanPage) -> proto::ClientResponse {
    let pairs = page.pairs.into_iter().map(|pair| proto::KeyValue { key: pair.key.into(), value: pair.value.into() });
    proto::ClientResponse {
        request_id,
        error: ErrorCode::Ok as i32,
        success: true,
        term: page.term,
        index: page.index,
        pairs: pairs.collect(),
        has_resume: page.resume.is_some(),
        resume_key: page.resume.unwrap_or_default().into(),
        ..Default::default()
    }
}

/// The page an OK answer to a scan carries.
pub fn scan_page_from_proto(response: proto::ClientResponse) -> ScanPage {
    let pairs = response.pairs.into_iter().map(|pair| KeyValue { key: pair.key.into(), value: pair.value.into() });
    ScanPage {
        pairs: pairs.collect(),
        resume: response.has_resume.then(|| response.resume_key.into()),
        term: response.term,
        index: response.index,
    }
}

// ----- log entries and snapshots -----

pub fn entry_to_proto(entry: &Entry) -> proto::Entry {
    let command = match &entry.payload {
        EntryPayload::Noop => None,
        EntryPayload::Command(request) => {
            let operation = operation_to_proto(&request.operation);
            Some(proto::Command {
                client_id: request.client_id,
                sequence: request.sequence,
                operation: Some(command_operation(operation)),
            })
        }
    };
    proto::Entry { term: entry.term, index: entry.index, command }
}

fn command_operation(operation: proto::client_request::Operation) -> proto::command::Operation {
    use proto::client_request::Operation as From;
    use proto::command::Operation as To;
    match operation {
        From::Set(set) => To::Set(set),
        From::Get(get) => To::Get(get),
        From::Cas(cas) => To::Cas(cas),
        From::Del(del) => To::Del(del),
        From::OpenSession(open) => To::OpenSession(open),
        From::Split(split) => To::Split(split),
        From::Scan(scan) => To::Scan(scan),
        From::MetaUpdate(update) => To::MetaUpdate(update),
        From::MetaLookup(lookup) => To::MetaLookup(lookup),
    }
}

fn request_operation(operation: proto::command::Operation) -> proto::client_request::Operation {
    use proto::client_request::Operation as To;
    use proto::command::Operation as From;
    match operation {
        From::Set(set) => To::Set(set),
        From::Get(get) => To::Get(get),
        From::Cas(cas) => To::Cas(cas),
        From::Del(del) => To::Del(del),
        From::OpenSession(open) => To::OpenSession(open),
        From::Split(split) => To::Split(split),
        From::Scan(scan) => To::Scan(scan),
        From::MetaUpdate(update) => To::MetaUpdate(update),
        From::MetaLookup(lookup) => To::MetaLookup(lookup),
    }
}

pub fn entry_from_proto(entry: proto::Entry) -> Result<Entry, WireError> {
    let payload = match entry.command {
        None => EntryPayload::Noop,
        Some(command) => {
            let operation =
                command.operation.ok_or(WireError::MissingField { message: "Command", field: "operation" })?;
            EntryPayload::Command(ClientRequest {
                client_id: command.client_id,
                sequence: command.sequence,
                operation: operation_from_proto(request_operation(operation)).map_err(WireError::BadDescriptor)?,
            })
        }
    };
    Ok(Entry { term: entry.term, index: entry.index, payload })
}

// ----- peer messages -----

pub fn peer_message_to_proto(envelope: &Envelope) -> proto::PeerMessage {
    use proto::peer_message::Body;
    let body = match &envelope.message {
        Message::PreVote { term, last_log_index, last_log_term } => Body::PreVote(proto::PreVote {
            term: *term,
            last_log_index: *last_log_index,
            last_log_term: *last_log_term,
        }),
        Message::PreVoteResponse { term, granted, last_log_index, last_log_term } => {
            Body::PreVoteResponse(vote_response_to_proto(*term, *granted, *last_log_index, *last_log_term))
        }
        Message::Vote { term, last_log_index, last_log_term } => {
            Body::Vote(proto::PreVote { term: *term, last_log_index: *last_log_index, last_log_term: *last_log_term })
        }
        Message::VoteResponse { term, granted, last_log_index, last_log_term } => {
            Body::VoteResponse(vote_response_to_proto(*term, *granted, *last_log_index, *last_log_term))
        }
        Message::Fetch { term, prev_index, prev_term } => {
            Body::Fetch(proto::Fetch { term: *term, prev_index: *prev_index, prev_term: *prev_term })
        }
        Message::FetchResponse { term, prev_index, matched, entries } => Body::FetchResponse(proto::FetchResponse {
            term: *term,
            prev_index: *prev_index,
            matched: *matched,
            entries: entries.iter().map(entry_to_proto).collect(),
        }),
        Message::Append { term, prev_index, prev_term, entries, commit, round } => Body::Append(proto::Append {
            term: *term,
            prev_index: *prev_index,
            prev_term: *prev_term,
            entries: entries.iter().map(entry_to_proto).collect(),
            commit: *commit,
            round: *round,
        }),
        Message::AppendResponse { term, success, index, hint, round } => Body::AppendResponse(proto::AppendResponse {
            term: *term,
            success: *success,
            index: *index,
            hint: hint.map(|hint| proto::RejectHint {
                conflict_index: hint.conflict_index,
                has_conflict_term: hint.conflict_term.is_some(),
                conflict_term: hint.conflict_term.unwrap_or(0),
            }),
            round: *round,
        }),
        Message::Heartbeat { term, commit, round } => {
            Body::Heartbeat(proto::Heartbeat { term: *term, commit: *commit, round: *round })
        }
        Message::HeartbeatResponse { term, round } => {
            Body::HeartbeatResponse(proto::HeartbeatResponse { term: *term, round: *round })
        }
        Message::Release { term, successor } => Body::Release(proto::Release { term: *term, successor: *successor }),
        Message::InstallSnapshot { .. } => {
            panic!("an InstallSnapshot leaves as a stream of SnapshotChunks (rasputin-server's snapshot module), never whole")
        }
        Message::InstallSnapshotResponse { term, last_index, round } => {
            Body::InstallSnapshotResponse(proto::InstallSnapshotResponse {
                term: *term,
                last_index: *last_index,
                round: *round,
            })
        }
    };
    proto::PeerMessage { range_id: DEFAULT_RANGE_ID, from: envelope.from, to: envelope.to, body: Some(body) }
}

fn vote_response_to_proto(
    term: Term,
    granted: bool,
    last_log_index: LogIndex,
    last_log_term: Term,
) -> proto::VoteResponse {
    proto::VoteResponse { term, granted, last_log_index, last_log_term }
}

/// What a peer frame holds: a consensus message, or a part of a snapshot
/// stream, which the daemon handles beside consensus.
#[derive(Debug)]
pub enum PeerFrame {
    Consensus(Envelope),
    Chunk {
        from: NodeId,
        to: NodeId,
        chunk: proto::SnapshotChunk,
    },
    ChunkAck {
        from: NodeId,
        to: NodeId,
        ack: proto::SnapshotChunkAck,
    },
    /// The receiver of a message from `to` does not host its range.
    RangeUnknown {
        from: NodeId,
        to: NodeId,
    },
    /// The range's descriptor, for a node that does not host it.
    RangeIntroduction {
        from: NodeId,
        to: NodeId,
        descriptor: RangeDescriptor,
    },
    /// A data leader's last split, for the meta range to record.
    MetaRecord {
        from: NodeId,
        to: NodeId,
        term: Term,
        descriptors: Vec<RangeDescriptor>,
    },
    /// The meta range holds the split of `version` sent in `term`, or newer.
    MetaRecorded {
        from: NodeId,
        to: NodeId,
        term: Term,
        version: u64,
    },
}

impl PeerFrame {
    pub fn from_to(&self) -> (NodeId, NodeId) {
        match self {
            PeerFrame::Consensus(envelope) => (envelope.from, envelope.to),
            PeerFrame::Chunk { from, to, .. }
            | PeerFrame::ChunkAck { from, to, .. }
            | PeerFrame::RangeUnknown { from, to }
            | PeerFrame::RangeIntroduction { from, to, .. }
            | PeerFrame::MetaRecord { from, to, .. }
            | PeerFrame::MetaRecorded { from, to, .. } => (*from, *to),
        }
    }
}

/// Converts a peer frame and checks a consensus message in it as far as it
/// can be checked without the receiver's state (`consensus::check_structure`).
/// What fails here never reaches consensus. A snapshot chunk's checksum is
/// checked where it is written.
pub fn peer_frame_from_proto(message: proto::PeerMessage) -> Result<PeerFrame, WireError> {
    use proto::peer_message::Body;
    let (from, to) = (message.from, message.to);
    match message.body {
        Some(Body::SnapshotChunk(chunk)) => Ok(PeerFrame::Chunk { from, to, chunk }),
        Some(Body::SnapshotChunkAck(ack)) => Ok(PeerFrame::ChunkAck { from, to, ack }),
        Some(Body::RangeUnknown(_)) => Ok(PeerFrame::RangeUnknown { from, to }),
        Some(Body::RangeIntroduction(introduction)) => {
            let missing = WireError::MissingField { message: "RangeIntroduction", field: "descriptor" };
            let descriptor = introduction.descriptor.ok_or(missing)?;
            let descriptor = RangeDescriptor::from_proto(descriptor).map_err(WireError::BadDescriptor)?;
            if descriptor.id != range_from_wire(message.range_id) {
                return Err(WireError::Mismatched {
                    message: "RangeIntroduction",
                    field: "descriptor id and range_id",
                });
            }
            Ok(PeerFrame::RangeIntroduction { from, to, descriptor })
        }
        Some(Body::MetaRecord(record)) => {
            let count = record.descriptors.len();
            if count == 0 || count > meta::DESCRIPTORS_PER_UPDATE_MAX {
                return Err(WireError::Mismatched { message: "MetaRecord", field: "descriptors (1 or 2 of them)" });
            }
            let descriptors = record.descriptors.into_iter().map(RangeDescriptor::from_proto);
            let descriptors = descriptors.collect::<Result<Vec<_>, _>>().map_err(WireError::BadDescriptor)?;
            if descriptors.iter().any(RangeDescriptor::is_meta) {
                return Err(WireError::Mismatched { message: "MetaRecord", field: "descriptors (of data ranges)" });
            }
            Ok(PeerFrame::MetaRecord { from, to, term: record.term, descriptors })
        }
        Some(Body::MetaRecorded(recorded)) => {
            Ok(PeerFrame::MetaRecorded { from, to, term: recorded.term, version: recorded.version })
        }
        _ => {
            let envelope = peer_message_unchecked(message)?;
            consensus::check_structure(&envelope.message)?;
            Ok(PeerFrame::Consensus(envelope))
        }
    }
}

/// The InstallSnapshot that the last chunk of a stream stands for, once
/// every chunk is written: the leader's term and round from the chunk, the
/// position from the chunk's checked header. Checked like any consensus
/// message from the wire.
pub fn install_snapshot_message(
    from: NodeId,
    to: NodeId,
    chunk: &proto::SnapshotChunk,
    position: (LogIndex, Term),
) -> Result<Envelope, WireError> {
    let (last_index, last_term) = position;
    let snapshot = rasputin_consensus::Snapshot { last_index, last_term, data: Bytes::new() };
    let message = Message::InstallSnapshot { term: chunk.term, snapshot, round: chunk.round };
    consensus::check_structure(&message)?;
    Ok(Envelope { from, to, message })
}

/// The daemon's message saying that `from` does not host `range`.
pub fn range_unknown_to_proto(from: NodeId, to: NodeId, range: RangeId) -> proto::PeerMessage {
    let body = proto::peer_message::Body::RangeUnknown(proto::RangeUnknown {});
    proto::PeerMessage { range_id: range_to_wire(range), from, to, body: Some(body) }
}

/// The daemon's message introducing `descriptor`'s range to `to`.
pub fn range_introduction_to_proto(from: NodeId, to: NodeId, descriptor: &RangeDescriptor) -> proto::PeerMessage {
    let introduction = proto::RangeIntroduction { descriptor: Some(descriptor.to_proto()) };
    let body = proto::peer_message::Body::RangeIntroduction(introduction);
    proto::PeerMessage { range_id: range_to_wire(descriptor.id), from, to, body: Some(body) }
}

/// A data leader's last split, from the leader of `range` in `term`, for the meta range.
pub fn meta_record_to_proto(
    from: NodeId,
    to: NodeId,
    range: RangeId,
    term: Term,
    descriptors: &[RangeDescriptor],
) -> proto::PeerMessage {
    let descriptors = descriptors.iter().map(RangeDescriptor::to_proto).collect();
    let body = proto::peer_message::Body::MetaRecord(proto::MetaRecord { term, descriptors });
    proto::PeerMessage { range_id: range_to_wire(range), from, to, body: Some(body) }
}

/// The meta range's answer to a `MetaRecord` from the leader of `range`.
pub fn meta_recorded_to_proto(
    from: NodeId,
    to: NodeId,
    range: RangeId,
    term: Term,
    version: u64,
) -> proto::PeerMessage {
    let body = proto::peer_message::Body::MetaRecorded(proto::MetaRecorded { term, version });
    proto::PeerMessage { range_id: range_to_wire(range), from, to, body: Some(body) }
}

/// A snapshot chunk or its acknowledgement, from `from` to `to`.
pub fn stream_message_to_proto(from: NodeId, to: NodeId, body: proto::peer_message::Body) -> proto::PeerMessage {
    proto::PeerMessage { range_id: DEFAULT_RANGE_ID, from, to, body: Some(body) }
}

fn peer_message_unchecked(message: proto::PeerMessage) -> Result<Envelope, WireError> {
    use proto::peer_message::Body;
    let body = message.body.ok_or(WireError::MissingField { message: "PeerMessage", field: "body" })?;
    let message_body = match body {
        Body::PreVote(vote) => {
            Message::PreVote { term: vote.term, last_log_index: vote.last_log_index, last_log_term: vote.last_log_term }
        }
        Body::PreVoteResponse(response) => Message::PreVoteResponse {
            term: response.term,
            granted: response.granted,
            last_log_index: response.last_log_index,
            last_log_term: response.last_log_term,
        },
        Body::Vote(vote) => {
            Message::Vote { term: vote.term, last_log_index: vote.last_log_index, last_log_term: vote.last_log_term }
        }
        Body::VoteResponse(response) => Message::VoteResponse {
            term: response.term,
            granted: response.granted,
            last_log_index: response.last_log_index,
            last_log_term: response.last_log_term,
        },
        Body::Fetch(fetch) => {
            Message::Fetch { term: fetch.term, prev_index: fetch.prev_index, prev_term: fetch.prev_term }
        }
        Body::FetchResponse(response) => Message::FetchResponse {
            term: response.term,
            prev_index: response.prev_index,
            matched: response.matched,
            entries: response.entries.into_iter().map(entry_from_proto).collect::<Result<_, _>>()?,
        },
        Body::Append(append) => Message::Append {
            term: append.term,
            prev_index: append.prev_index,
            prev_term: append.prev_term,
            entries: append.entries.into_iter().map(entry_from_proto).collect::<Result<_, _>>()?,
            commit: append.commit,
            round: append.round,
        },
        Body::AppendResponse(response) => Message::AppendResponse {
            term: response.term,
            success: response.success,
            index: response.index,
            hint: response.hint.map(|hint| RejectHint {
                conflict_index: hint.conflict_index,
                conflict_term: hint.has_conflict_term.then_some(hint.conflict_term),
            }),
            round: response.round,
        },
        Body::Heartbeat(heartbeat) => {
            Message::Heartbeat { term: heartbeat.term, commit: heartbeat.commit, round: heartbeat.round }
        }
        Body::HeartbeatResponse(response) => Message::HeartbeatResponse { term: response.term, round: response.round },
        Body::Release(release) => Message::Release { term: release.term, successor: release.successor },
        Body::InstallSnapshotResponse(response) => Message::InstallSnapshotResponse {
            term: response.term,
            last_index: response.last_index,
            round: response.round,
        },
        Body::SnapshotChunk(_)
        | Body::SnapshotChunkAck(_)
        | Body::RangeUnknown(_)
        | Body::RangeIntroduction(_)
        | Body::MetaRecord(_)
        | Body::MetaRecorded(_) => {
            unreachable!(
                "peer_frame_from_proto takes the daemon's own messages out before consensus messages are converted"
            )
        }
    };
    Ok(Envelope { from: message.from, to: message.to, message: message_body })
}

/// Encodes any prost message to bytes (for storage values).
pub fn to_bytes(message: &impl prost::Message) -> Vec<u8> {
    message.encode_to_vec()
}

/// The consensus hard state as stored.
pub fn hard_state_to_proto(state: consensus::HardState) -> proto::HardState {
    proto::HardState { term: state.term, has_vote: state.voted_for.is_some(), voted_for: state.voted_for.unwrap_or(0) }
}

pub fn hard_state_from_proto(state: proto::HardState) -> consensus::HardState {
    consensus::HardState { term: state.term, voted_for: state.has_vote.then_some(state.voted_for) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_their_whole_body() {
        let hello = proto::Hello { protocol_version: PROTOCOL_VERSION, role: 1, ..Default::default() };
        let mut buffer = BytesMut::new();
        encode_frame(&hello, &mut buffer);
        let whole = buffer.clone();
        let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(take_frame(&mut partial, 100).unwrap().is_none(), "a truncated frame is not yet a frame");
        let frame = take_frame(&mut buffer, 100).unwrap().expect("a whole frame");
        assert_eq!(decode::<proto::Hello>(frame, "Hello").unwrap(), hello);
        assert!(buffer.is_empty());
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let error = take_frame(&mut buffer, CLIENT_FRAME_BYTES_MAX).unwrap_err();
        assert!(matches!(error, WireError::FrameTooLarge { length: 0xffff_ffff, .. }));
        assert!(buffer.capacity() < 1024, "nothing was reserved for the claimed body");
    }

    /// Issue 13, item 7: a header that declares a large body reserves nothing.
    #[test]
    fn a_declared_length_within_the_limit_reserves_nothing_either() {
        let mut buffer = BytesMut::from(&((PEER_FRAME_BYTES_MAX as u32).to_be_bytes())[..]);
        assert!(take_frame(&mut buffer, PEER_FRAME_BYTES_MAX).unwrap().is_none());
        assert!(buffer.capacity() < 1024, "reserved {} bytes for a body not sent", buffer.capacity());
    }

    /// Issue 13, item 5: the largest cas each field allows fits in one frame.
    #[test]
    fn the_largest_valid_request_fits_in_a_client_frame() {
        let request = proto::ClientRequest {
            request_id: u64::MAX,
            client_id: u64::MAX,
            sequence: u64::MAX,
            range_id: u64::MAX,
            collection: DEFAULT_COLLECTION.to_string(),
            operation: Some(proto::client_request::Operation::Cas(proto::Cas {
                key: Bytes::from(vec![1; KEY_BYTES_MAX]),
                expected: Bytes::from(vec![2; VALUE_BYTES_MAX]),
                new: Bytes::from(vec![3; VALUE_BYTES_MAX]),
            })),
            status: None,
            transfer_leadership: None,
            epoch: Some(proto::RangeEpoch { version: u64::MAX, conf_ver: u64::MAX }),
        };
        assert_eq!(check_request_frame(&request), Ok(()));
        let mut buffer = BytesMut::new();
        encode_frame(&request, &mut buffer);
        assert!(take_frame(&mut buffer, CLIENT_FRAME_BYTES_MAX).unwrap().is_some());
    }

    #[test]
    fn garbage_does_not_decode() {
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff, 0x01, 0x02]);
        assert!(decode::<proto::PeerMessage>(garbage, "PeerMessage").is_err());
    }

    #[test]
    fn every_peer_message_round_trips() {
        let entries = vec![
            Entry { term: 2, index: 5, payload: EntryPayload::Noop },
            Entry {
                term: 2,
                index: 6,
                payload: EntryPayload::Command(ClientRequest {
                    client_id: 9,
                    sequence: 3,
                    operation: Operation::Cas {
                        key: bytes::Bytes::from_static(b"k"),
                        expected: bytes::Bytes::from_static(b"a"),
                        new: bytes::Bytes::from_static(b"b"),
                    },
                }),
            },
        ];
        let messages = vec![
            Message::PreVote { term: 3, last_log_index: 4, last_log_term: 2 },
            Message::PreVoteResponse { term: 3, granted: true, last_log_index: 4, last_log_term: 2 },
            Message::Vote { term: 3, last_log_index: 4, last_log_term: 2 },
            Message::VoteResponse { term: 3, granted: false, last_log_index: 7, last_log_term: 3 },
            Message::Fetch { term: 3, prev_index: 4, prev_term: 2 },
            Message::FetchResponse { term: 3, prev_index: 4, matched: true, entries: entries.clone() },
            Message::FetchResponse { term: 3, prev_index: 5, matched: false, entries: Vec::new() },
            Message::Append { term: 2, prev_index: 4, prev_term: 1, entries, commit: 3, round: 7 },
            Message::AppendResponse {
                term: 2,
                success: false,
                index: 4,
                hint: Some(RejectHint { conflict_index: 2, conflict_term: Some(1) }),
                round: 7,
            },
            Message::AppendResponse { term: 2, success: true, index: 6, hint: None, round: 7 },
            Message::Heartbeat { term: 2, commit: 6, round: 8 },
            Message::HeartbeatResponse { term: 2, round: 8 },
            Message::Release { term: 2, successor: 3 },
            Message::InstallSnapshotResponse { term: 2, last_index: 4, round: 9 },
        ];
        for message in messages {
            let envelope = Envelope { from: 1, to: 2, message };
            let mut buffer = BytesMut::new();
            encode_frame(&peer_message_to_proto(&envelope), &mut buffer);
            let frame = take_frame(&mut buffer, PEER_FRAME_BYTES_MAX).unwrap().unwrap();
            let decoded = peer_frame_from_proto(decode(frame, "PeerMessage").unwrap()).unwrap();
            assert!(matches!(decoded, PeerFrame::Consensus(decoded) if decoded == envelope));
        }
    }

    #[test]
    fn meta_records_round_trip_and_carry_one_or_two_well_formed_descriptors() {
        let (left, right) = RangeDescriptor::first(vec![1, 2, 3]).split_at(&Bytes::from_static(b"m"), 0, 9).unwrap();
        let record = meta_record_to_proto(1, 2, 1, 4, &[left.clone(), right.clone()]);
        let converted = peer_frame_from_proto(record.clone()).unwrap();
        assert!(matches!(&converted, PeerFrame::MetaRecord { from: 1, to: 2, term: 4, descriptors }
            if *descriptors == [left.clone(), right.clone()]));
        let recorded = peer_frame_from_proto(meta_recorded_to_proto(2, 1, 1, 4, 1)).unwrap();
        assert!(matches!(recorded, PeerFrame::MetaRecorded { from: 2, to: 1, term: 4, version: 1 }));

        let too_many = meta_record_to_proto(1, 2, 1, 4, &[left.clone(), right.clone(), right.clone()]);
        assert!(matches!(peer_frame_from_proto(too_many), Err(WireError::Mismatched { .. })));
        assert!(matches!(
            peer_frame_from_proto(meta_record_to_proto(1, 2, 1, 4, &[])),
            Err(WireError::Mismatched { .. })
        ));
        let mut malformed = record;
        let Some(proto::peer_message::Body::MetaRecord(body)) = &mut malformed.body else { unreachable!() };
        body.descriptors[1].id = 0;
        assert!(matches!(peer_frame_from_proto(malformed), Err(WireError::BadDescriptor(_))));
    }

    #[test]
    fn range_introductions_round_trip_and_must_describe_the_range_they_name() {
        let (_, right) = RangeDescriptor::first(vec![1, 2, 3]).split_at(&Bytes::from_static(b"m"), 0, 9).unwrap();
        let introduction = range_introduction_to_proto(1, 2, &right);
        let converted = peer_frame_from_proto(introduction.clone()).unwrap();
        assert!(
            matches!(&converted, PeerFrame::RangeIntroduction { from: 1, to: 2, descriptor } if *descriptor == right)
        );
        let unknown = peer_frame_from_proto(range_unknown_to_proto(2, 1, 9)).unwrap();
        assert!(matches!(unknown, PeerFrame::RangeUnknown { from: 2, to: 1 }));

        let elsewhere = proto::PeerMessage { range_id: 8, ..introduction.clone() };
        assert!(matches!(peer_frame_from_proto(elsewhere), Err(WireError::Mismatched { .. })));
        let mut malformed = introduction.clone();
        let Some(proto::peer_message::Body::RangeIntroduction(body)) = &mut malformed.body else { unreachable!() };
        body.descriptor.as_mut().unwrap().id = 0;
        assert!(matches!(peer_frame_from_proto(malformed), Err(WireError::BadDescriptor(_))));
        let empty = proto::PeerMessage {
            body: Some(proto::peer_message::Body::RangeIntroduction(proto::RangeIntroduction { descriptor: None })),
            ..introduction
        };
        assert!(matches!(peer_frame_from_proto(empty), Err(WireError::MissingField { .. })));
    }

    #[test]
    fn meta_requests_round_trip_and_a_malformed_descriptor_is_refused() {
        let (left, right) = RangeDescriptor::first(vec![1, 2, 3]).split_at(&Bytes::from_static(b"m"), 0, 2).unwrap();
        let update = Operation::MetaUpdate { descriptors: vec![left, right] };
        let request = ClientRequest { client_id: 0, sequence: 7, operation: update.clone() };
        assert_eq!(client_request_from_proto(client_request_to_proto(1, &request)), Ok(request.clone()));
        let with_session = ClientRequest { client_id: 4, ..request.clone() };
        let refused = client_request_from_proto(client_request_to_proto(1, &with_session));
        assert_eq!(refused, Err(RequestError::MalformedOpen { client_id: 4, sequence: 7 }));
        let lookup = Operation::MetaLookup { key: Bytes::from_static(b"k"), limit: 8 };
        let request = ClientRequest { client_id: 0, sequence: 9, operation: lookup };
        assert_eq!(client_request_from_proto(client_request_to_proto(1, &request)), Ok(request));

        // A descriptor whose end is not after its start, from a client or in a peer's entry.
        let mut wire = client_request_to_proto(1, &ClientRequest { client_id: 0, sequence: 7, operation: update });
        let Some(proto::client_request::Operation::MetaUpdate(meta)) = &mut wire.operation else { unreachable!() };
        meta.descriptors[0].end = Bytes::new();
        let refused = client_request_from_proto(wire.clone());
        assert!(matches!(refused, Err(RequestError::BadDescriptor(_))), "{refused:?}");
        let entry = proto::Entry {
            term: 1,
            index: 1,
            command: Some(proto::Command {
                client_id: 0,
                sequence: 7,
                operation: wire.operation.map(command_operation),
            }),
        };
        assert!(matches!(entry_from_proto(entry), Err(WireError::BadDescriptor(_))));
    }

    #[test]
    fn scans_round_trip_need_a_nonce_and_keys_within_the_limit() {
        let scan = |sequence: u64, end_bytes: usize| {
            let operation = Operation::Scan {
                start: Bytes::from_static(b"a"),
                end: Some(Bytes::from(vec![b'z'; end_bytes])),
                limit: 5,
            };
            client_request_to_proto(1, &ClientRequest { client_id: 0, sequence, operation })
        };
        let decoded = client_request_from_proto(scan(9, 1)).expect("a scan with a nonce");
        assert_eq!(decoded.operation.key(), b"a");
        assert!(matches!(decoded.operation, Operation::Scan { end: Some(_), limit: 5, .. }));
        assert_eq!(client_request_from_proto(scan(0, 1)), Err(RequestError::NoSession { client_id: 0, sequence: 0 }));
        assert_eq!(
            client_request_from_proto(scan(9, KEY_BYTES_MAX + 1)),
            Err(RequestError::KeyTooLarge(KEY_BYTES_MAX + 1))
        );
        let unbounded = ClientRequest {
            client_id: 0,
            sequence: 3,
            operation: Operation::Scan { start: Bytes::new(), end: None, limit: 0 },
        };
        assert_eq!(client_request_from_proto(client_request_to_proto(1, &unbounded)), Ok(unbounded));
    }

    #[test]
    fn scan_pages_round_trip() {
        let page = ScanPage {
            pairs: vec![KeyValue { key: b"k".to_vec(), value: Vec::new() }],
            resume: Some(b"l".to_vec()),
            term: 2,
            index: 9,
        };
        let response = scan_page_to_proto(4, page.clone());
        assert_eq!(response.request_id, 4);
        assert_eq!(scan_page_from_proto(response), page);
        let last = ScanPage { resume: None, ..page };
        assert_eq!(scan_page_from_proto(scan_page_to_proto(4, last.clone())), last);
    }

    #[test]
    fn requests_are_validated() {
        let request = |collection: &str, range_id: u64, value: usize| proto::ClientRequest {
            collection: collection.to_string(),
            range_id,
            client_id: 1,
            sequence: 1,
            operation: Some(proto::client_request::Operation::Set(proto::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![0; value]),
            })),
            ..Default::default()
        };
        assert!(client_request_from_proto(request("", 0, 10)).is_ok());
        assert!(client_request_from_proto(request("kv", 0, VALUE_BYTES_MAX)).is_ok());
        assert_eq!(
            client_request_from_proto(request("kv", 0, VALUE_BYTES_MAX + 1)),
            Err(RequestError::ValueTooLarge(VALUE_BYTES_MAX + 1))
        );
        assert_eq!(client_request_from_proto(request("log", 0, 1)), Err(RequestError::UnknownCollection("log".into())));
        // The range is the daemon's to route; any id converts.
        assert!(client_request_from_proto(request("kv", 3, 1)).is_ok());
        let empty = proto::ClientRequest::default();
        assert_eq!(client_request_from_proto(empty), Err(RequestError::NoOperation));
    }

    /// Issue 13, item 6: the protobuf defaults (client 0, sequence 0) are refused.
    #[test]
    fn requests_need_a_session_and_a_sequence() {
        let set = |client_id, sequence| proto::ClientRequest {
            client_id,
            sequence,
            operation: Some(proto::client_request::Operation::Set(proto::Set::default())),
            ..Default::default()
        };
        assert_eq!(client_request_from_proto(set(0, 0)), Err(RequestError::NoSession { client_id: 0, sequence: 0 }));
        assert!(client_request_from_proto(set(5, 0)).is_err());
        assert!(client_request_from_proto(set(0, 5)).is_err());
        assert!(client_request_from_proto(set(5, 1)).is_ok());
        let get = |client_id, sequence| proto::ClientRequest {
            client_id,
            sequence,
            operation: Some(proto::client_request::Operation::Get(proto::Get::default())),
            ..Default::default()
        };
        assert!(client_request_from_proto(get(0, 7)).is_ok(), "a read needs no session");
        assert!(client_request_from_proto(get(0, 0)).is_err());
        let open = |client_id, sequence| proto::ClientRequest {
            client_id,
            sequence,
            operation: Some(proto::client_request::Operation::OpenSession(proto::OpenSession {})),
            ..Default::default()
        };
        assert!(client_request_from_proto(open(0, 77)).is_ok());
        assert!(client_request_from_proto(open(0, 0)).is_err());
        assert!(client_request_from_proto(open(3, 77)).is_err());
    }
}
