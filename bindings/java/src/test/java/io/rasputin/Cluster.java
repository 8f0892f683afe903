package io.rasputin;

import java.io.IOException;
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

    private static int freePort() throws IOException {
        try (ServerSocket socket = new ServerSocket(0)) {
            return socket.getLocalPort();
        }
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
