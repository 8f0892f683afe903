//! Snapshots streamed to followers (`Streams`, on the leader) and received
//! from the leader (`Receiver`, on a follower), beside consensus.
//!
//! Consensus only says that a follower needs a snapshot (an InstallSnapshot
//! with no data). The leader then opens a RocksDB view on the snapshot
//! thread and sends it as a stream of `SnapshotChunk`s, each at most
//! SNAPSHOT_CHUNK_BYTES_MAX and checked by its own checksum. The follower
//! writes each chunk to an SST file and acknowledges it with the storage
//! key it ended at. At most SNAPSHOT_CHUNKS_IN_FLIGHT_MAX chunks wait for
//! acknowledgement, and a chunk is queued only when the connection has
//! room, so that heartbeats wait behind a few MiB at most. When the
//! connection drops, the stream goes on from the last chunk acknowledged.
//! When the last chunk is written, the follower steps the InstallSnapshot
//! it stands for, and consensus installs the staged file.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use mio::Token;
use tracing::{debug, info, warn};

use super::storage::{
    ChunkError, IncomingSnapshot, RangeStorage, SnapshotSource, StagedSnapshot, StorageError, ViewAnswer, ViewRequest,
    STATE_KEY_BYTES_MAX,
};
use rasputin_consensus::{LogIndex, NodeId, Term};
use rasputin_kv::range::RangeId;
use rasputin_kv::snapshot::{self, ChunkReader, SNAPSHOT_CHUNK_BYTES_MAX};
use rasputin_kv::wire::proto;

/// Snapshots a leader streams at once; other followers wait their turn.
pub const SNAPSHOT_TRANSFERS_COUNT_MAX: usize = 4;
/// Chunks of one transfer sent and not yet acknowledged.
pub const SNAPSHOT_CHUNKS_IN_FLIGHT_MAX: u64 = 4;
/// A chunk is queued only while the connection holds fewer unsent bytes
/// than this, so that a heartbeat never waits behind more than about two chunks.
pub const SNAPSHOT_QUEUED_BYTES_MAX: usize = SNAPSHOT_CHUNK_BYTES_MAX;
/// A transfer that makes no progress for this long is dropped, on both sides.
pub const SNAPSHOT_TRANSFER_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// After a snapshot reaches a follower, how long at most the log it needs
/// to catch up from is kept, and no other is sent to it, unless its match
/// index passes the snapshot first.
const SNAPSHOT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests to the snapshot thread not yet answered: an open, a chunk and
/// a close per transfer at most.
const VIEW_REQUESTS_COUNT_MAX: usize = 3 * SNAPSHOT_TRANSFERS_COUNT_MAX;

/// A chunk of a range's snapshot for a follower, ready to queue on its connection.
pub type OutgoingChunk = (Follower, proto::SnapshotChunk);

/// A follower's replica of a range: where a transfer goes.
pub type Follower = (RangeId, NodeId);

/// The leader's side, for every range this node leads: the transfers under
/// way and those just finished. One snapshot thread reads for all of them,
/// and SNAPSHOT_TRANSFERS_COUNT_MAX bounds them all together.
pub struct Streams {
    /// Joined on drop, so that its handle on the database is gone before the
    /// daemon closes it (see `Drop`).
    thread: Option<std::thread::JoinHandle<()>>,
    requests: mpsc::SyncSender<ViewRequest>,
    answers: mpsc::Receiver<ViewAnswer>,
    /// Requests sent to the snapshot thread and not answered.
    outstanding: usize,
    transfers: BTreeMap<Follower, Transfer>,
    /// Views to close once the thread has room for the request.
    closing: Vec<u64>,
    next_id: u64,
    /// Followers catching up from a snapshot that reached them.
    delivered: BTreeMap<Follower, Delivered>,
    /// Transfers begun and transfers a follower confirmed, for the metrics.
    pub started_count: u64,
    pub finished_count: u64,
}

/// A stream to one follower.
#[derive(Debug)]
struct Transfer {
    id: u64,
    term: Term,
    round: u64,
    /// Known once the snapshot thread has opened the view.
    position: Option<(LogIndex, Term)>,
    /// The connection the chunks go out on; a new one means a rewind.
    connection: Option<Token>,
    /// The next chunk to read and send, and the key it starts after.
    next_sequence: u64,
    after: Option<Vec<u8>>,
    /// The follower has every chunk below this, ending at `acked_key`.
    acked: u64,
    acked_key: Option<Vec<u8>>,
    /// The chunk the snapshot thread is reading.
    reading: Option<u64>,
    /// The last chunk has been sent.
    sent_last: bool,
    progress_at: Instant,
    started_at: Instant,
    bytes_sent: u64,
}

/// A snapshot that reached a follower.
#[derive(Clone, Copy, Debug)]
struct Delivered {
    at: Instant,
    index: LogIndex,
    connection: Option<Token>,
}

impl Streams {
    /// Starts the snapshot thread; `wake` wakes the event loop.
    pub fn start(source: SnapshotSource, wake: impl Fn() + Send + 'static) -> std::io::Result<Streams> {
        let (requests, requested) = mpsc::sync_channel(VIEW_REQUESTS_COUNT_MAX);
        let (answer, answers) = mpsc::sync_channel(VIEW_REQUESTS_COUNT_MAX);
        let thread = std::thread::Builder::new()
            .name("rasputin-snapshots".into())
            .spawn(move || source.serve(requested, answer, wake))?;
        Ok(Streams {
            thread: Some(thread),
            requests,
            answers,
            outstanding: 0,
            transfers: BTreeMap::new(),
            closing: Vec::new(),
            // Unique across restarts, so that a follower never takes a new
            // transfer for the rest of an old one.
            next_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_nanos() as u64),
            delivered: BTreeMap::new(),
            started_count: 0,
            finished_count: 0,
        })
    }

    /// Consensus wants `peer` to have a snapshot of `range` (again, maybe):
    /// start a transfer, unless one is under way or has just reached it.
    pub fn request(&mut self, range: RangeId, peer: NodeId, term: Term, round: u64) {
        let peer = (range, peer);
        if let Some(transfer) = self.transfers.get_mut(&peer) {
            if transfer.term == term {
                transfer.round = round;
                return;
            }
        }
        if self.delivered.contains_key(&peer) {
            debug!(?peer, "not sending another snapshot: the follower is still catching up from the last one");
            return;
        }
        self.abort(peer, "a new term");
        if self.transfers.len() >= SNAPSHOT_TRANSFERS_COUNT_MAX {
            debug!(?peer, "not sending a snapshot yet: {SNAPSHOT_TRANSFERS_COUNT_MAX} transfers are under way");
            return;
        }
        let id = self.next_id;
        if !self.ask(ViewRequest::Open { transfer: id, range }) {
            return;
        }
        self.next_id += 1;
        self.started_count += 1;
        info!(range, peer = peer.1, transfer = id, "streaming a snapshot to a follower behind the log");
        let now = Instant::now();
        self.transfers.insert(
            peer,
            Transfer {
                id,
                term,
                round,
                position: None,
                connection: None,
                next_sequence: 0,
                after: None,
                acked: 0,
                acked_key: None,
                reading: None,
                sent_last: false,
                progress_at: now,
                started_at: now,
                bytes_sent: 0,
            },
        );
    }

    /// Sends `request` to the snapshot thread if it has room.
    fn ask(&mut self, request: ViewRequest) -> bool {
        if self.outstanding >= VIEW_REQUESTS_COUNT_MAX {
            return false;
        }
        match self.requests.try_send(request) {
            Ok(()) => {
                self.outstanding += 1;
                true
            }
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => panic!("the snapshot thread stopped while the daemon runs"),
        }
    }

    fn abort(&mut self, peer: Follower, reason: &str) {
        if let Some(transfer) = self.transfers.remove(&peer) {
            info!(
                range = peer.0,
                peer = peer.1,
                transfer = transfer.id,
                sent_bytes = transfer.bytes_sent,
                reason,
                "dropping a snapshot transfer"
            );
            self.closing.push(transfer.id);
        }
    }

    /// Takes what the snapshot thread answered: the chunks it read, ready to send.
    pub fn on_answers(&mut self) -> Result<Vec<OutgoingChunk>, StorageError> {
        let mut chunks = Vec::new();
        loop {
            let answer = match self.answers.try_recv() {
                Ok(answer) => answer,
                Err(TryRecvError::Empty) => return Ok(chunks),
                Err(TryRecvError::Disconnected) => panic!("the snapshot thread stopped while the daemon runs"),
            };
            self.outstanding -= 1;
            match answer {
                ViewAnswer::Opened { transfer, position } => {
                    let position = position?;
                    if let Some(found) = self.transfers.values_mut().find(|found| found.id == transfer) {
                        found.position = Some(position);
                    } else {
                        self.closing.push(transfer);
                    }
                }
                ViewAnswer::Chunk { transfer, sequence, chunk } => {
                    let chunk = chunk?;
                    let Some((&peer, found)) = self.transfers.iter_mut().find(|(_, found)| found.id == transfer) else {
                        continue;
                    };
                    if found.reading != Some(sequence) {
                        continue;
                    }
                    found.reading = None;
                    if sequence != found.next_sequence {
                        // Read before a rewind.
                        continue;
                    }
                    found.next_sequence += 1;
                    found.after = chunk.last_key;
                    found.sent_last = chunk.last;
                    found.bytes_sent += chunk.data.len() as u64;
                    let message = proto::SnapshotChunk {
                        transfer_id: transfer,
                        term: found.term,
                        round: found.round,
                        data: chunk.data,
                    };
                    chunks.push((peer, message));
                }
                ViewAnswer::Closed { .. } => {}
            }
        }
    }

    /// Moves every transfer along: drops those of an older term or that
    /// stalled, rewinds those whose connection changed, and asks for the
    /// next chunk where the window and the connection have room.
    /// `connection` gives a peer's connection and the bytes it has queued.
    /// `sending_term` is the term in which consensus may send snapshots now
    /// (`Node::snapshot_sending_term`) of each range: a leader's, or a
    /// voter's answering its leader-elect's fetch.
    pub fn pump(
        &mut self,
        sending_term: impl Fn(RangeId) -> Option<Term>,
        connection: impl Fn(NodeId) -> Option<(Token, usize)>,
    ) {
        let peers: Vec<Follower> = self.transfers.keys().copied().collect();
        for peer in peers {
            let transfer = &self.transfers[&peer];
            if sending_term(peer.0) != Some(transfer.term) {
                self.abort(peer, "the term it was sent in is over");
                continue;
            }
            if transfer.progress_at.elapsed() > SNAPSHOT_TRANSFER_STALL_TIMEOUT {
                self.abort(peer, "no progress");
                continue;
            }
            let current = connection(peer.1);
            let transfer = self.transfers.get_mut(&peer).expect("listed above");
            if current.map(|(token, _)| token) != transfer.connection {
                if transfer.connection.is_some() {
                    info!(
                        range = peer.0,
                        peer = peer.1,
                        transfer = transfer.id,
                        from_chunk = transfer.acked,
                        "resuming a snapshot on a new connection"
                    );
                }
                transfer.rewind(transfer.acked, transfer.acked_key.clone());
                transfer.connection = current.map(|(token, _)| token);
            }
            let Some((_, queued_bytes)) = current else { continue };
            let in_flight = transfer.next_sequence - transfer.acked;
            let Some(position) = transfer.position else { continue };
            let ready = transfer.reading.is_none() && !transfer.sent_last && in_flight < SNAPSHOT_CHUNKS_IN_FLIGHT_MAX;
            if !ready || queued_bytes >= SNAPSHOT_QUEUED_BYTES_MAX {
                continue;
            }
            let request = ViewRequest::Chunk {
                transfer: transfer.id,
                sequence: transfer.next_sequence,
                position,
                after: transfer.after.clone(),
            };
            let sequence = transfer.next_sequence;
            if self.ask(request) {
                self.transfers.get_mut(&peer).expect("listed above").reading = Some(sequence);
            }
        }
        while let Some(&transfer) = self.closing.last() {
            if !self.ask(ViewRequest::Close { transfer }) {
                break;
            }
            self.closing.pop();
        }
    }

    /// The follower said it does not host the range: it drops the
    /// chunks, so the transfer would hold a slot until it timed out, and
    /// the one a range it does host needs could wait behind it.
    pub fn abort_unhosted(&mut self, peer: Follower) {
        self.abort(peer, "the follower does not host the range");
    }

    /// The follower's acknowledgement of the transfer to it.
    pub fn on_ack(&mut self, peer: Follower, ack: &proto::SnapshotChunkAck) {
        let Some(transfer) = self.transfers.get_mut(&peer).filter(|transfer| transfer.id == ack.transfer_id) else {
            return;
        };
        if ack.refused {
            self.abort(peer, "the follower refused it");
            return;
        }
        // Nothing the follower says can move the stream past what was sent.
        if ack.next_sequence > transfer.next_sequence || ack.written_through.len() > STATE_KEY_BYTES_MAX {
            warn!(?peer, ?ack.next_sequence, "ignoring an impossible snapshot acknowledgement");
            return;
        }
        let written_through = (!ack.written_through.is_empty()).then(|| ack.written_through.to_vec());
        if ack.next_sequence > transfer.acked || ack.resend {
            transfer.acked = ack.next_sequence;
            transfer.acked_key = written_through.clone();
            transfer.progress_at = Instant::now();
        }
        if ack.resend {
            transfer.rewind(ack.next_sequence, written_through);
        }
        if transfer.sent_last && transfer.acked == transfer.next_sequence {
            let transfer = self.transfers.remove(&peer).expect("found above");
            let index = transfer.position.expect("a view was open to send its chunks").0;
            let seconds = transfer.started_at.elapsed().as_secs_f64();
            info!(
                range = peer.0,
                peer = peer.1,
                index,
                bytes = transfer.bytes_sent,
                seconds,
                "a snapshot reached a follower"
            );
            self.closing.push(transfer.id);
            self.finished_count += 1;
            self.delivered.insert(peer, Delivered { at: Instant::now(), index, connection: transfer.connection });
        }
    }

    /// Forgets the snapshots that reached followers whose match index has
    /// passed them, whose connection closed (so they may be lost), or that
    /// arrived SNAPSHOT_CATCH_UP_TIMEOUT ago.
    pub fn forget_caught_up(
        &mut self,
        match_index: impl Fn(Follower) -> Option<LogIndex>,
        outbound: impl Fn(NodeId) -> Option<Token>,
    ) {
        self.delivered.retain(|&peer, delivered| {
            let connection_lives = outbound(peer.1) == delivered.connection;
            let behind = match_index(peer).is_some_and(|matched| matched < delivered.index);
            delivered.at.elapsed() < SNAPSHOT_CATCH_UP_TIMEOUT && connection_lives && behind
        });
    }

    /// The lowest index of a snapshot of `range` a follower may still need
    /// the log after: being streamed, or just delivered.
    pub fn catch_up_floor(&self, range: RangeId) -> Option<LogIndex> {
        let of_range = |follower: &&Follower| follower.0 == range;
        let streaming = self.transfers.iter().filter(|(follower, _)| of_range(follower));
        let streaming = streaming.filter_map(|(_, transfer)| transfer.position.map(|position| position.0));
        let delivered = self.delivered.iter().filter(|(follower, _)| of_range(follower));
        streaming.chain(delivered.map(|(_, delivered)| delivered.index)).min()
    }

    /// A view of `range` is being opened at a position not known yet, at
    /// least the compacted index: its follower will need the log after it.
    pub fn opening(&self, range: RangeId) -> bool {
        self.transfers.iter().any(|(follower, transfer)| follower.0 == range && transfer.position.is_none())
    }
}

impl Drop for Streams {
    /// Stops the snapshot thread and waits for it. A RocksDB view or handle
    /// still open in another thread when the process exits makes RocksDB
    /// abort ("pthread lock: Invalid argument") instead of exiting with the
    /// daemon's code. Both channels close first: the thread may be waiting
    /// to send an answer.
    fn drop(&mut self) {
        let (closed_requests, _) = mpsc::sync_channel(0);
        let (_, closed_answers) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.requests, closed_requests));
        drop(std::mem::replace(&mut self.answers, closed_answers));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Transfer {
    fn rewind(&mut self, sequence: u64, after: Option<Vec<u8>>) {
        self.next_sequence = sequence;
        self.after = after;
        self.sent_last = false;
    }
}

/// A follower's side: the one snapshot it is receiving.
#[derive(Default)]
pub struct Receiver {
    receiving: Option<Receiving>,
}

struct Receiving {
    id: u64,
    leader: NodeId,
    position: (LogIndex, Term),
    next_sequence: u64,
    snapshot: IncomingSnapshot,
    chunk_at: Instant,
}

/// What a follower does with a chunk.
pub enum ChunkOutcome {
    /// Tell the leader where the stream stands.
    Ack(proto::SnapshotChunkAck),
    /// The chunk is corrupt or breaks the format: the transfer is dropped;
    /// tell the leader, and treat the connection as one that sent bad input.
    Bad { ack: proto::SnapshotChunkAck, error: ChunkError },
    /// The last chunk is written: acknowledge it, and step the
    /// InstallSnapshot it stands for with the snapshot staged.
    Complete { ack: proto::SnapshotChunkAck, staged: StagedSnapshot, position: (LogIndex, Term) },
}

fn refusal(transfer_id: u64) -> proto::SnapshotChunkAck {
    proto::SnapshotChunkAck { transfer_id, refused: true, ..Default::default() }
}

impl Receiver {
    /// Takes a chunk of a stream from `leader`. A chunk that is bad, or
    /// that starts a stream in the middle (this node restarted, say), gets
    /// a refusal: the leader then starts another. A disk error stops the node, as anywhere else.
    pub fn on_chunk(
        &mut self,
        storage: &mut RangeStorage,
        leader: NodeId,
        message: &proto::SnapshotChunk,
    ) -> Result<ChunkOutcome, StorageError> {
        let chunk = match ChunkReader::new(&message.data) {
            Ok(chunk) => chunk,
            Err(error) => {
                self.drop_transfer(storage)?;
                return Ok(ChunkOutcome::Bad { ack: refusal(message.transfer_id), error: error.into() });
            }
        };
        let current = self
            .receiving
            .as_ref()
            .is_some_and(|receiving| (receiving.id, receiving.leader) == (message.transfer_id, leader));
        if !current {
            if chunk.sequence != 0 {
                return Ok(ChunkOutcome::Ack(refusal(message.transfer_id)));
            }
            info!(leader, index = chunk.applied_index, transfer = message.transfer_id, "receiving a snapshot");
            let snapshot = storage.begin_incoming(chunk.position())?;
            self.receiving = Some(Receiving {
                id: message.transfer_id,
                leader,
                position: chunk.position(),
                next_sequence: 0,
                snapshot,
                chunk_at: Instant::now(),
            });
        }
        let receiving = self.receiving.as_mut().expect("set above");
        if chunk.sequence != receiving.next_sequence {
            // A repeat after a rewind, or a gap where a chunk was dropped.
            return Ok(ChunkOutcome::Ack(receiving.ack(chunk.sequence > receiving.next_sequence)));
        }
        let written = snapshot::check_next(&chunk, receiving.position, receiving.next_sequence)
            .map_err(ChunkError::from)
            .and_then(|()| receiving.snapshot.write(&chunk));
        match written {
            Ok(()) => {}
            Err(ChunkError::Storage(error)) => return Err(error),
            Err(error) => {
                self.drop_transfer(storage)?;
                return Ok(ChunkOutcome::Bad { ack: refusal(message.transfer_id), error });
            }
        }
        receiving.next_sequence += 1;
        receiving.chunk_at = Instant::now();
        let ack = receiving.ack(false);
        if !chunk.last {
            return Ok(ChunkOutcome::Ack(ack));
        }
        let receiving = self.receiving.take().expect("set above");
        let staged = receiving.snapshot.finish()?;
        Ok(ChunkOutcome::Complete { ack, staged, position: receiving.position })
    }

    /// Drops a transfer whose leader has gone quiet.
    pub fn drop_if_stalled(&mut self, storage: &mut RangeStorage) -> Result<(), StorageError> {
        if self
            .receiving
            .as_ref()
            .is_some_and(|receiving| receiving.chunk_at.elapsed() > SNAPSHOT_TRANSFER_STALL_TIMEOUT)
        {
            info!("dropping a snapshot transfer: the leader sent nothing for {SNAPSHOT_TRANSFER_STALL_TIMEOUT:?}");
            self.drop_transfer(storage)?;
        }
        Ok(())
    }

    fn drop_transfer(&mut self, storage: &mut RangeStorage) -> Result<(), StorageError> {
        if self.receiving.take().is_some() {
            storage.clear_staging()?;
        }
        Ok(())
    }
}

impl Receiving {
    fn ack(&self, resend: bool) -> proto::SnapshotChunkAck {
        proto::SnapshotChunkAck {
            transfer_id: self.id,
            next_sequence: self.next_sequence,
            written_through: self.snapshot.last_key().map(|key| key.to_vec().into()).unwrap_or_default(),
            resend,
            refused: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;
    use rasputin_consensus::{HardState, Snapshot};
    use rasputin_kv::operation::{ClientRequest, Entry, EntryPayload, Operation, Persist};
    use rasputin_kv::range::FIRST_RANGE_ID;
    use rasputin_kv::state_machine::KvRead;
    use rocksdb::WriteBatch;

    use super::*;
    use crate::storage::Storage;

    const LEADER: NodeId = 1;
    const FOLLOWER: NodeId = 2;
    const MEMBERS: [NodeId; 3] = [1, 2, 3];
    const VALUE_BYTES: usize = 60 << 10;
    const KEYS: u64 = 200;

    fn temporary(name: &str) -> std::path::PathBuf {
        let directory = std::env::temp_dir().join(format!("rasputin-stream-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        directory
    }

    /// A leader's store with KEYS values of VALUE_BYTES each, written by
    /// two clients whose sessions are part of the state too.
    fn filled_store(directory: &std::path::Path) -> Storage {
        let mut storage = Storage::open(directory, &MEMBERS).unwrap();
        let entry = |index, client_id, sequence, operation| Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(ClientRequest { client_id, sequence, operation }),
        };
        let mut entries = vec![entry(1, 0, 1, Operation::OpenSession), entry(2, 0, 2, Operation::OpenSession)];
        for key in 0..KEYS {
            let value = Bytes::from(vec![key as u8; VALUE_BYTES]);
            let set = Operation::Set { key: Bytes::from(format!("key-{key:05}")), value };
            entries.push(entry(3 + key, 1 + key % 2, 1 + key / 2, set));
        }
        storage.first_range_mut().apply(&entries, HardState::default()).unwrap();
        storage
    }

    /// The acceptance test of streamed snapshots: a snapshot many chunks
    /// long goes from one store to another, the connection drops in the
    /// middle with chunks and an acknowledgement lost on it, the stream
    /// resumes from the last chunk acknowledged rather than from the
    /// start, and the follower ends byte-identical to the leader.
    #[test]
    fn a_stream_resumes_after_a_dropped_connection_and_the_follower_ends_identical() {
        let (from, to) = (temporary("leader"), temporary("follower"));
        let leader_storage = filled_store(&from);
        let mut follower = Storage::open(&to, &MEMBERS).unwrap().into_first_range();
        let (woken, wakes) = mpsc::channel();
        let mut streams = Streams::start(leader_storage.snapshot_source(), move || {
            let _ = woken.send(());
        })
        .unwrap();
        let leader = leader_storage.first_range();
        let mut receiver = Receiver::default();
        streams.request(FIRST_RANGE_ID, FOLLOWER, 1, 7);

        // One connection: chunks queued on it, in order; a new token after a drop.
        let mut connection = Token(100);
        let mut wire: VecDeque<proto::SnapshotChunk> = VecDeque::new();
        let (mut delivered, mut dropped, mut resumed_at) = (0u64, false, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        let complete = loop {
            assert!(Instant::now() < deadline, "the stream did not finish in time");
            let queued: usize = wire.iter().map(|chunk| chunk.data.len()).sum();
            streams.pump(|_| Some(1), |_| Some((connection, queued)));
            let Some(chunk) = wire.pop_front() else {
                wakes.recv_timeout(Duration::from_secs(10)).expect("the snapshot thread answers");
                wire.extend(streams.on_answers().unwrap().into_iter().map(|(peer, chunk)| {
                    assert_eq!(peer, (FIRST_RANGE_ID, FOLLOWER));
                    chunk
                }));
                continue;
            };
            if dropped && resumed_at.is_none() {
                resumed_at = Some(ChunkReader::new(&chunk.data).unwrap().sequence);
            }
            let received = receiver.on_chunk(&mut follower, LEADER, &chunk).unwrap();
            delivered += 1;
            let ack = match received {
                ChunkOutcome::Ack(ack) => ack,
                ChunkOutcome::Bad { error, .. } => panic!("chunk {delivered} was refused: {error}"),
                ChunkOutcome::Complete { ack, staged, position } => {
                    streams.on_ack((FIRST_RANGE_ID, FOLLOWER), &ack);
                    break (staged, position, chunk);
                }
            };
            assert!(!ack.refused, "chunk {delivered} was refused");
            if delivered == 3 && !dropped {
                // The connection drops: what was queued on it, and this
                // acknowledgement, are lost.
                dropped = true;
                wire.clear();
                connection = Token(101);
                continue;
            }
            streams.on_ack((FIRST_RANGE_ID, FOLLOWER), &ack);
        };
        let (staged, position, last_chunk) = complete;
        assert_eq!(position, leader.applied(), "the snapshot is at the leader's applied position");
        let sequence = ChunkReader::new(&last_chunk.data).unwrap().sequence;
        assert!(sequence >= 3, "the snapshot took {} chunks; it must be longer than a few", sequence + 1);
        let snapshot_bytes = (KEYS as usize) * VALUE_BYTES;
        assert!(snapshot_bytes > 3 * SNAPSHOT_CHUNK_BYTES_MAX, "the snapshot is larger than its chunk limit");
        let resumed_at = resumed_at.expect("chunks arrived after the drop");
        assert!(resumed_at > 0 && resumed_at <= 3, "resumed at chunk {resumed_at}, not after the acknowledged ones");

        follower.offer_staged(staged);
        let snapshot = Snapshot { last_index: position.0, last_term: position.1, data: Bytes::new() };
        let mut batch = WriteBatch::default();
        follower.stage(&mut batch, &Persist { snapshot: Some(snapshot), ..Persist::default() }, true).unwrap();
        follower.write(batch, true).unwrap();
        follower.clear_staging().unwrap();
        assert_eq!(follower.applied(), leader.applied());
        assert_eq!(follower.census(), leader.census(), "the sessions' census came with the snapshot");
        let (leader_state, follower_state) = (leader.state_records().unwrap(), follower.state_records().unwrap());
        assert_eq!(leader_state.len() as u64, KEYS + 2, "every value and both sessions");
        assert!(leader_state == follower_state, "the follower's state differs from the leader's");
        drop((streams, leader_storage, follower));
        std::fs::remove_dir_all(&from).unwrap();
        std::fs::remove_dir_all(&to).unwrap();
    }

    /// A chunk that starts a stream in the middle, or whose checksum fails,
    /// is refused and nothing is staged; the leader then starts over.
    #[test]
    fn a_follower_refuses_a_corrupt_chunk_and_one_without_a_start() {
        let directory = temporary("refusing");
        let mut follower = Storage::open(&directory, &MEMBERS).unwrap().into_first_range();
        let mut receiver = Receiver::default();
        let chunk = |sequence: u64, corrupt: bool| {
            let mut writer = rasputin_kv::snapshot::ChunkWriter::new(5, 1, sequence);
            writer.push(&rasputin_kv::snapshot::Record::Value { key: b"k", value: b"v" });
            let mut data = writer.finish(false);
            if corrupt {
                data[40] ^= 1;
            }
            proto::SnapshotChunk { transfer_id: 9, term: 1, round: 1, data: data.into() }
        };
        let refused = |received: ChunkOutcome| match received {
            ChunkOutcome::Ack(ack) | ChunkOutcome::Bad { ack, .. } => ack.refused,
            ChunkOutcome::Complete { .. } => false,
        };
        assert!(refused(receiver.on_chunk(&mut follower, LEADER, &chunk(1, false)).unwrap()));
        assert!(refused(receiver.on_chunk(&mut follower, LEADER, &chunk(0, true)).unwrap()));
        assert!(!refused(receiver.on_chunk(&mut follower, LEADER, &chunk(0, false)).unwrap()));
        assert!(refused(receiver.on_chunk(&mut follower, LEADER, &chunk(1, true)).unwrap()));
        assert!(!directory.join("snapshot-in/1").exists(), "a refused transfer leaves nothing staged");
        drop(follower);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
