package io.rasputin;

import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.stream.Stream;

/** Three real rasputind processes on free loopback ports, for the tests. */
final class Cluster implements AutoCloseable {
    private final Path directory;
    private final List<Process> processes = new ArrayList<>();
    final List<String> clientAddresses = new ArrayList<>();

    Cluster() throws IOException, InterruptedException {
        Path binary = Path.of(System.getProperty("rasputind", "../../target/release/rasputind"));
        if (!Files.isExecutable(binary)) {
            throw new IllegalStateException(binary + " is missing: run `cargo build --release` first");
        }
        directory = Files.createTempDirectory("rasputin-junit-");
        List<Integer> peerPorts = new ArrayList<>();
        for (int n = 0; n < 3; n++) {
            peerPorts.add(freePort());
            clientAddresses.add("127.0.0.1:" + freePort());
        }
        String seeds = String.join(",", peerPorts.stream().map(port -> "127.0.0.1:" + port).toList());
        try {
            for (int n = 0; n < 3; n++) {
                processes.add(new ProcessBuilder(
                                binary.toString(),
                                "--peer-port=" + peerPorts.get(n),
                                "--cli-port=" + clientAddresses.get(n).split(":")[1],
                                "--seed-peers=" + seeds,
                                "--storage-dir=" + directory.resolve("node" + n),
                                "--logfile=" + directory.resolve("node" + n + ".log"))
                        .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                        .redirectError(ProcessBuilder.Redirect.DISCARD)
                        .start());
            }
            waitUntilServing();
        } catch (IOException | RuntimeException | InterruptedException e) {
            close();
            throw e;
        }
    }

    // Daemon ports come from below Linux's ephemeral range (32768-60999): a
    // port that binding port 0 picked and the test released could be taken as
    // the source port of a client connection before the daemon binds it.
    private static final int TEST_PORT_LOW = 20000;
    private static final int TEST_PORT_HIGH = 32000;
    private static int nextTestPort = (int) (ProcessHandle.current().pid() * 7919 % (TEST_PORT_HIGH - TEST_PORT_LOW));

    private static synchronized int freePort() throws IOException {
        int span = TEST_PORT_HIGH - TEST_PORT_LOW;
        for (int attempt = 0; attempt < span; attempt++) {
            int port = TEST_PORT_LOW + nextTestPort++ % span;
            try (ServerSocket socket = new ServerSocket(port, 1, InetAddress.getLoopbackAddress())) {
                return port;
            } catch (IOException taken) {
                // in use: try the next one
            }
        }
        throw new IOException("no port in [" + TEST_PORT_LOW + ", " + TEST_PORT_HIGH + ") is free on 127.0.0.1");
    }

    private void waitUntilServing() throws InterruptedException {
        Instant deadline = Instant.now().plus(Duration.ofSeconds(30));
        try (RasputinClient probe = new RasputinClient(clientAddresses, 1, Duration.ofSeconds(2))) {
            while (true) {
                try {
                    probe.get("readiness-probe".getBytes());
                    return;
                } catch (RasputinException notYet) {
                    if (Instant.now().isAfter(deadline)) {
                        throw notYet;
                    }
                }
            }
        }
    }

    /** Sends {@code signal} (for example "STOP" or "CONT") to every node, by pid. */
    void signalAll(String signal) throws IOException, InterruptedException {
        for (Process process : processes) {
            int status = new ProcessBuilder("kill", "-" + signal, Long.toString(process.pid())).start().waitFor();
            if (status != 0) {
                throw new IllegalStateException("kill -" + signal + " " + process.pid() + " exited with " + status);
            }
        }
    }

    @Override
    public void close() {
        for (Process process : processes) {
            process.destroyForcibly();
            try {
                process.waitFor();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        try (Stream<Path> paths = Files.walk(directory)) {
            paths.sorted(Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
        } catch (IOException e) {
            // Best effort: the directory is under the system temp dir.
        }
    }
}
