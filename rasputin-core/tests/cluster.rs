//! Integration tests with real `rasputind` processes on loopback: leader
//! crashes, full restarts, a wiped node catching up through a snapshot, and
//! bad input on both ports. Ports are picked free; every process started is
//! killed and every directory removed when a test ends, pass or fail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rasputin::state_machine::KvRead;
use rasputin::wire::{self, proto};
use rasputin::Client;

const DEADLINE: Duration = Duration::from_secs(30);

struct Member {
    peer_port: u16,
    client_port: u16,
    directory: PathBuf,
    logfile: PathBuf,
    process: Option<Child>,
}

struct Cluster {
    root: PathBuf,
    members: Vec<Member>,
    peers: String,
    snapshot_every_entries: u64,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

impl Cluster {
    fn start(name: &str, snapshot_every_entries: u64) -> Cluster {
        let root = std::env::temp_dir().join(format!("rasputin-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let members: Vec<Member> = (1..=3)
            .map(|n| Member {
                peer_port: free_port(),
                client_port: free_port(),
                directory: root.join(format!("node{n}")),
                logfile: root.join(format!("node{n}.log")),
                process: None,
            })
            .collect();
        let peers =
            members.iter().map(|member| format!("127.0.0.1:{}", member.peer_port)).collect::<Vec<_>>().join(",");
        let mut cluster = Cluster { root, members, peers, snapshot_every_entries };
        for index in 0..3 {
            cluster.launch(index);
        }
        cluster
    }

    fn launch(&mut self, index: usize) {
        self.launch_with(index, &[]);
    }

    fn launch_with(&mut self, index: usize, extra: &[&str]) {
        let child = self.command(index).args(extra).stdin(Stdio::null()).spawn().expect("start rasputind");
        self.members[index].process = Some(child);
    }

    /// The command that starts member `index`.
    fn command(&self, index: usize) -> Command {
        let member = &self.members[index];
        let mut command = Command::new(env!("CARGO_BIN_EXE_rasputind"));
        command
            .arg(format!("--peer-port={}", member.peer_port))
            .arg(format!("--cli-port={}", member.client_port))
            .arg(format!("--seed-peers={}", self.peers))
            .arg(format!("--storage-dir={}", member.directory.display()))
            .arg(format!("--logfile={}", member.logfile.display()))
            .arg(format!("--snapshot-every-entries={}", self.snapshot_every_entries));
        command
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn client_addresses(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|member| format!("127.0.0.1:{}", member.client_port).parse().unwrap()).collect()
    }

    fn client(&self) -> Client {
        Client::new(self.client_addresses(), 2)
    }

    fn index_of(&self, client_address: SocketAddr) -> usize {
        self.members.iter().position(|member| member.client_port == client_address.port()).expect("a member's address")
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.members[index].logfile).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Polls `condition` until it holds or the deadline passes.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_keys(client: &Client, range: std::ops::Range<u32>, tag: &str) {
    for n in range {
        let key = format!("key-{n}");
        let value = format!("{tag}-{n}");
        client.set(key.as_bytes(), value.as_bytes()).unwrap_or_else(|error| panic!("set {key}: {error}"));
    }
}

fn assert_keys(client: &Client, range: std::ops::Range<u32>, tag: &str) {
    for n in range {
        let key = format!("key-{n}");
        let response = client.get(key.as_bytes()).unwrap_or_else(|error| panic!("get {key}: {error}"));
        assert!(response.get_success(), "{key} is missing");
        assert_eq!(response.get_value(), format!("{tag}-{n}").as_bytes(), "{key}");
    }
}

#[test]
fn writes_resume_after_the_leader_is_killed() {
    let mut cluster = Cluster::start("leader-kill", 10_000);
    let client = cluster.client();
    write_keys(&client, 0..50, "before");
    let old_leader = client.leader().expect("a leader answered");
    cluster.kill(cluster.index_of(old_leader));
    // Every write of the loop must still succeed: the client retries through the election.
    write_keys(&client, 50..150, "after");
    let new_leader = client.leader().expect("a new leader answered");
    assert_ne!(new_leader, old_leader, "the dead node cannot lead");
    assert_keys(&client, 0..50, "before");
    assert_keys(&client, 50..150, "after");
}

#[test]
fn acknowledged_writes_survive_a_full_restart() {
    let mut cluster = Cluster::start("full-restart", 10_000);
    write_keys(&cluster.client(), 0..200, "durable");
    for index in 0..3 {
        cluster.kill(index);
    }
    for index in 0..3 {
        cluster.launch(index);
    }
    assert_keys(&cluster.client(), 0..200, "durable");
}

#[test]
fn a_wiped_node_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start("wipe", 50);
    let client = cluster.client();
    write_keys(&client, 0..20, "first");
    let leader = cluster.index_of(client.leader().unwrap());
    let victim = (leader + 1) % 3;
    cluster.kill(victim);
    std::fs::remove_dir_all(&cluster.members[victim].directory).unwrap();
    // Enough writes that the log is compacted past everything the victim had.
    write_keys(&client, 20..300, "second");
    cluster.launch_with(victim, &["--replace"]);
    eventually("the wiped node installs a snapshot", || cluster.log(victim).contains("installing a snapshot"));
    // With the other follower gone, writes commit only if the wiped node acknowledges them.
    let other = 3 - leader - victim;
    cluster.kill(other);
    write_keys(&client, 300..310, "third");
    for index in 0..3 {
        cluster.kill(index);
    }
    let storage = rasputin::server::Storage::open(&cluster.members[victim].directory).unwrap();
    assert_eq!(storage.value(b"key-5").unwrap(), Some(b"first-5".to_vec()), "the snapshot carried old data");
    assert_eq!(storage.value(b"key-250").unwrap(), Some(b"second-250".to_vec()));
    drop(storage);
    for index in 0..3 {
        cluster.launch(index);
    }
    assert_keys(&cluster.client(), 300..310, "third");
}

/// Sends `bytes` on a fresh connection to `port` and reports whether the
/// server closed the connection (within the deadline).
fn server_closes_after(port: u16, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.write_all(bytes).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock || error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn frame(message: &impl prost::Message) -> Vec<u8> {
    let mut buffer = bytes::BytesMut::new();
    wire::encode_frame(message, &mut buffer);
    buffer.to_vec()
}

/// Sends a client hello and `request` over a raw connection to `port`, and
/// returns the first `count` frames the server sends back (within the deadline).
fn raw_client_exchange(port: u16, request: &proto::ClientRequest, count: usize) -> Vec<bytes::Bytes> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let hello = proto::Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        role: proto::hello::Role::Client as i32,
        ..Default::default()
    };
    stream.write_all(&[frame(&hello), frame(request)].concat()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buffer = bytes::BytesMut::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while frames.len() < count && Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(_) => {}
        }
        while let Some(body) = wire::take_frame(&mut buffer, wire::CLIENT_FRAME_BYTES_MAX).unwrap() {
            frames.push(body);
        }
    }
    frames
}

#[test]
fn bad_input_is_refused_and_the_server_keeps_serving() {
    let cluster = Cluster::start("bad-input", 10_000);
    let client = cluster.client();
    write_keys(&client, 0..5, "good");
    let member = &cluster.members[0];
    let client_hello = frame(&proto::Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        role: proto::hello::Role::Client as i32,
        ..Default::default()
    });
    let garbage: Vec<u8> = vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff];
    let oversized = u32::MAX.to_be_bytes().to_vec();
    let mut truncated = frame(&proto::Hello { protocol_version: 1, role: 1, ..Default::default() });
    truncated.truncate(truncated.len() - 1);
    let old_version = frame(&proto::Hello { protocol_version: 99, role: 1, ..Default::default() });
    let peer_unknown_node = frame(&proto::Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        role: proto::hello::Role::Peer as i32,
        node_id: 42,
        ..Default::default()
    });
    let undecodable_after_hello = [client_hello.clone(), garbage.clone()].concat();
    for port in [member.client_port, member.peer_port] {
        assert!(server_closes_after(port, &garbage), "garbage on port {port}");
        assert!(server_closes_after(port, &oversized), "an oversized length on port {port}");
        assert!(server_closes_after(port, &old_version), "an incompatible version on port {port}");
        // A truncated frame is only detected when the sender gives up: the server must not hang on it.
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(&truncated).unwrap();
        drop(stream);
    }
    assert!(server_closes_after(member.client_port, &undecodable_after_hello), "garbage after a client hello");
    assert!(server_closes_after(member.peer_port, &peer_unknown_node), "an unknown node on the peer port");
    assert!(server_closes_after(member.peer_port, &client_hello), "a client greeting the peer port");
    let log = cluster.log(0);
    assert!(log.contains("closing a connection that sent bad input"), "bad input is logged:\n{log}");
    assert!(log.contains("exceeds the limit"), "the oversized frame is named in the log");
    // The server still serves everyone else.
    write_keys(&client, 5..10, "good");
    assert_keys(&client, 0..10, "good");
}

#[test]
fn oversized_values_get_a_clear_error_and_the_key_is_untouched() {
    let cluster = Cluster::start("oversized", 10_000);
    let client = cluster.client();
    client.set(b"k", b"small").unwrap();
    let big = vec![7u8; wire::VALUE_BYTES_MAX + 1];
    let error = client.set(b"k", &big).unwrap_err();
    assert_eq!(error.code(), wire::ErrorCode::ValueTooLarge, "{error}");
    // The server checks too, for clients that skip the library.
    let request = proto::ClientRequest {
        request_id: 7,
        client_id: 1,
        sequence: 1,
        operation: Some(proto::client_request::Operation::Set(proto::Set { key: "k".into(), value: big.into() })),
        ..Default::default()
    };
    let responses = raw_client_exchange(cluster.members[0].client_port, &request, 2);
    assert_eq!(responses.len(), 2, "the server answered the hello and the request");
    let response: proto::ClientResponse = wire::decode(responses[1].clone(), "ClientResponse").unwrap();
    assert_eq!(
        (response.request_id, response.error),
        (7, wire::ErrorCode::ValueTooLarge as i32),
        "{}",
        response.message
    );
    assert_eq!(client.get(b"k").unwrap().get_value(), b"small");
}

#[test]
fn a_second_daemon_cannot_open_a_directory_in_use() {
    let cluster = Cluster::start("lock", 10_000);
    cluster.client().set(b"k", b"v").unwrap();
    let member = &cluster.members[0];
    // Same identity, same directory, another client port: refused by the lock.
    let output = Command::new(env!("CARGO_BIN_EXE_rasputind"))
        .arg(format!("--peer-port={}", member.peer_port))
        .arg(format!("--cli-port={}", free_port()))
        .arg(format!("--seed-peers={}", cluster.peers))
        .arg(format!("--storage-dir={}", member.directory.display()))
        .output()
        .expect("run a second rasputind");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked by another process"), "{stderr}");
    assert_eq!(cluster.client().get(b"k").unwrap().get_value(), b"v", "the running node is unharmed");
}

#[test]
fn bad_flags_exit_with_code_two() {
    let output = Command::new(env!("CARGO_BIN_EXE_rasputind")).arg("--peer-port=notaport").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let help = Command::new(env!("CARGO_BIN_EXE_rasputind")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--peer-port", "--cli-port", "--seed-peers", "--storage-dir", "--logfile"] {
        assert!(text.contains(flag), "--help documents {flag}");
    }
}

fn signal(cluster: &Cluster, index: usize, name: &str) {
    let pid = cluster.members[index].process.as_ref().expect("running").id();
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[test]
fn a_deposed_leader_redirects_the_writes_it_was_holding() {
    let cluster = Cluster::start("deposed", 10_000);
    let client = cluster.client();
    client.set(b"k", b"before").unwrap();
    let leader = cluster.index_of(client.leader().unwrap());
    let followers: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    for &follower in &followers {
        signal(&cluster, follower, "STOP");
    }
    // The leader appends this write but cannot commit it; when its lease runs
    // out it must answer "not leader" instead of holding the request forever.
    let request = proto::ClientRequest {
        request_id: 11,
        client_id: 77,
        sequence: 1,
        operation: Some(proto::client_request::Operation::Set(proto::Set { key: "k".into(), value: "held".into() })),
        ..Default::default()
    };
    let frames = raw_client_exchange(cluster.members[leader].client_port, &request, 2);
    for &follower in &followers {
        signal(&cluster, follower, "CONT");
    }
    assert_eq!(frames.len(), 2, "the deposed leader answered the held write");
    let response: proto::ClientResponse = wire::decode(frames[1].clone(), "ClientResponse").unwrap();
    assert_eq!(response.error, wire::ErrorCode::NotLeader as i32, "{}", response.message);
    // The cluster recovers, and whatever became of the held write, the value is one of the two.
    let value = client.get(b"k").unwrap();
    assert!(value.get_value() == b"before" || value.get_value() == b"held", "{:?}", value.get_value());
}
