package io.rasputin;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

class RasputinClientTest {
    private static Cluster cluster;

    @BeforeAll
    static void startCluster() throws Exception {
        cluster = new Cluster();
    }

    @AfterAll
    static void stopCluster() {
        if (cluster != null) {
            cluster.close();
        }
    }

    private static byte[] bytes(String text) {
        return text.getBytes(UTF_8);
    }

    private static RasputinClient client() {
        return new RasputinClient(cluster.clientAddresses, 4, Duration.ofSeconds(10));
    }

    @Test
    void theReadmeSequence() {
        try (RasputinClient client = client()) {
            client.set(bytes("k1"), bytes("v1"));
            assertArrayEquals(bytes("v1"), client.get(bytes("k1")));
            CasResult swapped = client.cas(bytes("k1"), bytes("v1"), bytes("v12"));
            assertTrue(swapped.success());
            assertArrayEquals(bytes("v12"), swapped.value());
            CasResult refused = client.cas(bytes("k1"), bytes("vNever"), bytes("vNever2"));
            assertFalse(refused.success());
            assertArrayEquals(bytes("v12"), refused.value());
            assertArrayEquals(bytes("v13"), client.cas(bytes("k1"), bytes("v12"), bytes("v13")).value());
            assertArrayEquals(bytes("v13"), client.delete(bytes("k1")));
            assertNull(client.get(bytes("k1")));
        }
    }

    @Test
    void missingKeysAreNullNotErrors() {
        try (RasputinClient client = client()) {
            assertNull(client.get(bytes("never-written")));
            assertNull(client.delete(bytes("never-written")));
            CasResult missing = client.cas(bytes("never-written"), bytes("a"), bytes("b"));
            assertFalse(missing.success());
            assertNull(missing.value());
        }
    }

    /** Issue 13, item 12: null means missing, and an empty value is not missing. */
    @Test
    void aFailedCasOnAnEmptyValueSaysTheKeyExists() {
        try (RasputinClient client = client()) {
            client.set(bytes("empty"), new byte[0]);
            CasResult refused = client.cas(bytes("empty"), bytes("wrong"), bytes("new"));
            assertFalse(refused.success());
            assertArrayEquals(new byte[0], refused.value());
        }
    }

    /** Issue 13, item 5: a cas whose values are each at the limit fits in a frame. */
    @Test
    void theLargestCasCompletes() {
        try (RasputinClient client = client()) {
            byte[] largest = new byte[1 << 20];
            CasResult refused = client.cas(bytes("largest-cas"), largest, largest);
            assertFalse(refused.success());
            assertNull(refused.value());
        }
    }

    /**
     * Issue 13, item 4: with the whole cluster stopped, a set times out; retrying
     * it with the exception applies that same request once.
     */
    @Test
    void aTimedOutWriteIsRetriedUnderItsIdentity() throws Exception {
        RasputinTimeoutException timedOut;
        try (RasputinClient impatient = new RasputinClient(cluster.clientAddresses, 1, Duration.ofSeconds(1))) {
            impatient.set(bytes("retried"), bytes("before"));
            cluster.signalAll("STOP");
            try {
                timedOut = assertThrows(RasputinTimeoutException.class, () -> impatient.set(bytes("retried"), bytes("after")));
            } finally {
                cluster.signalAll("CONT");
            }
        }
        assertEquals(5, timedOut.code());
        assertTrue(timedOut.retryToken().length > 0);
        try (RasputinClient client = client()) {
            RetryResult result = client.retry(timedOut);
            assertTrue(result.success() && result.found());
            assertArrayEquals(bytes("after"), result.value());
            assertArrayEquals(bytes("after"), client.get(bytes("retried")));
            assertArrayEquals(bytes("after"), client.retry(timedOut).value(), "a second retry gets the same answer");
        }
    }

    @Test
    void binaryAndEmptyDataRoundTrip() {
        try (RasputinClient client = client()) {
            byte[] key = {0, -1, 0};
            byte[] value = {0, 1, 0, -128};
            client.set(key, value);
            assertArrayEquals(value, client.get(key));
            client.set(new byte[0], new byte[0]);
            assertArrayEquals(new byte[0], client.get(new byte[0]));
        }
    }

    @Test
    void oversizedInputThrowsValueTooLarge() {
        try (RasputinClient client = client()) {
            ValueTooLargeException value =
                    assertThrows(ValueTooLargeException.class, () -> client.set(bytes("k"), new byte[1024 * 1024 + 1]));
            assertEquals(4, value.code());
            ValueTooLargeException key = assertThrows(ValueTooLargeException.class, () -> client.get(new byte[4097]));
            assertEquals(3, key.code());
            client.set(bytes("largest"), new byte[1024 * 1024]);
            assertEquals(1024 * 1024, client.get(bytes("largest")).length);
        }
    }

    @Test
    void aScanWalksItsPagesInKeyOrder() {
        try (RasputinClient client = client()) {
            List<String> keys = new ArrayList<>();
            for (int index = 0; index < 10_050; index++) {
                keys.add(String.format("scan-java/%05d", index));
            }
            ExecutorService writers = Executors.newFixedThreadPool(8);
            List<Future<?>> writes = new ArrayList<>();
            for (int part = 0; part < 8; part++) {
                int offset = part;
                writes.add(writers.submit(() -> {
                    for (int index = offset; index < keys.size(); index += 8) {
                        client.set(bytes(keys.get(index)), bytes("v" + index));
                    }
                }));
            }
            for (Future<?> write : writes) {
                assertDoesNotThrow(() -> write.get());
            }
            writers.shutdown();
            List<String> scanned = new ArrayList<>();
            for (KeyValue pair : client.scanPrefix(bytes("scan-java/"))) {
                scanned.add(new String(pair.key(), UTF_8));
            }
            assertEquals(keys, scanned, "more keys than one page holds, each once, in order");
            Scan window = client.scan(bytes("scan-java/00003"), bytes("scan-java/00006"));
            assertEquals(3, window.stream().count());
            assertEquals(3, window.stream().count(), "each iteration runs the scan afresh");
            KeyValue first = client.scan(bytes("scan-java/00007"), null, 1).iterator().next();
            assertArrayEquals(bytes("v7"), first.value());
            assertEquals(5, client.scan(bytes("scan-java/"), null, 5).stream().count());
            assertFalse(client.scan(bytes("scan-java/00005"), bytes("scan-java/00005")).iterator().hasNext());
            assertThrows(InvalidArgumentException.class, () -> client.scan(null, null));
            byte[] longKey = new byte[70_000];
            assertThrows(ValueTooLargeException.class, () -> client.scan(longKey, null).iterator().hasNext());
        }
    }

    @Test
    void nullArgumentsThrowInvalidArgument() {
        try (RasputinClient client = client()) {
            InvalidArgumentException error = assertThrows(InvalidArgumentException.class, () -> client.get(null));
            assertEquals(2, error.code());
            assertThrows(InvalidArgumentException.class, () -> client.set(bytes("k"), null));
            assertThrows(InvalidArgumentException.class, () -> client.cas(bytes("k"), null, bytes("b")));
            assertThrows(InvalidArgumentException.class, () -> client.delete(null));
        }
    }

    @Test
    void badConstructorArgumentsAreRefused() {
        assertThrows(InvalidArgumentException.class, () -> new RasputinClient(List.of("not an address")));
        assertThrows(InvalidArgumentException.class, () -> new RasputinClient(List.of()));
        assertThrows(InvalidArgumentException.class,
                () -> new RasputinClient(List.of("127.0.0.1:1"), 0, Duration.ofSeconds(1)));
        assertThrows(NullPointerException.class, () -> new RasputinClient(null));
    }

    @Test
    void anUnreachableClusterThrowsClusterUnavailable() {
        try (RasputinClient client = new RasputinClient(List.of("127.0.0.1:1"), 1, Duration.ofMillis(300))) {
            ClusterUnavailableException error =
                    assertThrows(ClusterUnavailableException.class, () -> client.get(bytes("k")));
            assertEquals(8, error.code());
            assertInstanceOf(RasputinException.class, error);
            assertTrue(error.getMessage().contains("cluster is running"));
        }
    }

    @Test
    void useAfterCloseThrowsClientClosed() {
        RasputinClient client = client();
        client.set(bytes("k"), bytes("v"));
        client.close();
        client.close();
        ClientClosedException error = assertThrows(ClientClosedException.class, () -> client.get(bytes("k")));
        assertEquals(RasputinClient.STATUS_CLOSED, error.code());
        assertThrows(ClientClosedException.class, () -> client.set(bytes("k"), bytes("v")));
        assertThrows(ClientClosedException.class, () -> client.cas(bytes("k"), bytes("v"), bytes("w")));
        assertThrows(ClientClosedException.class, () -> client.delete(bytes("k")));
    }

    @Test
    void eightThreadsShareOneClient() throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(8);
        try (RasputinClient client = client()) {
            List<Future<Integer>> results = new ArrayList<>();
            for (int thread = 0; thread < 8; thread++) {
                int number = thread;
                results.add(pool.submit(() -> {
                    int wrong = 0;
                    for (int n = 0; n < 50; n++) {
                        byte[] key = bytes("thread-" + number + "-" + n);
                        client.set(key, key);
                        if (!java.util.Arrays.equals(key, client.get(key))) {
                            wrong++;
                        }
                    }
                    return wrong;
                }));
            }
            for (Future<Integer> result : results) {
                assertEquals(0, result.get());
            }
        } finally {
            pool.shutdown();
        }
    }
}
