package io.rasputin;

import java.time.Duration;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.function.LongFunction;

/**
 * A client of a Rasputin cluster: a linearizable, replicated key-value store.
 *
 * <p><b>Thread safety:</b> one client is safe to use from many threads at
 * once; their requests are pipelined over {@code threads} connections per
 * server. {@link #close()} waits for calls in progress, and later calls throw
 * {@link ClientClosedException}.
 *
 * <pre>{@code
 * try (RasputinClient client = new RasputinClient(List.of("127.0.0.1:8888"))) {
 *     client.set("k".getBytes(), "v".getBytes());
 *     byte[] value = client.get("k".getBytes()); // null if missing
 * }
 * }</pre>
 *
 * <p>Every failure is a {@link RasputinException}; no native error crashes the JVM.
 */
public final class RasputinClient implements AutoCloseable {
    static {
        NativeLibrary.load();
    }

    /** The status number of {@link ClientClosedException}. */
    public static final int STATUS_CLOSED = 9;

    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private long handle;

    /** Creates a client with one connection per server and a 10 s timeout. */
    public RasputinClient(List<String> peers) {
        this(peers, 1, Duration.ofSeconds(10));
    }

    /**
     * Creates a client. Connections open lazily, on the first call.
     *
     * @param peers servers' client addresses, "host:port"; any one is enough
     * @param threads connections per server (at least 1)
     * @param timeout the longest a call may take, retries included
     * @throws InvalidArgumentException if an address is malformed or an option is out of range
     */
    public RasputinClient(List<String> peers, int threads, Duration timeout) {
        Objects.requireNonNull(peers, "peers");
        Objects.requireNonNull(timeout, "timeout");
        long operationMs = timeout.toMillis();
        long attemptMs = Math.min(operationMs, 2000);
        this.handle = nativeNew(String.join(",", peers), threads, attemptMs, operationMs);
    }

    /** Sets {@code key} to {@code value}. */
    public void set(byte[] key, byte[] value) {
        withHandle(handle -> {
            nativeSet(handle, key, value);
            return null;
        });
    }

    /** Returns the value of {@code key}, or {@code null} if it is missing. */
    public byte[] get(byte[] key) {
        return withHandle(handle -> nativeGet(handle, key));
    }

    /** Sets {@code key} to {@code newValue} if it holds {@code expected}. */
    public CasResult cas(byte[] key, byte[] expected, byte[] newValue) {
        return withHandle(handle -> nativeCas(handle, key, expected, newValue));
    }

    /** Deletes {@code key}; returns its previous value, or {@code null} if it was missing. */
    public byte[] delete(byte[] key) {
        return withHandle(handle -> nativeDelete(handle, key));
    }

    /**
     * Sends an operation that timed out again under its original identity, so
     * that it applies at most once, and returns its own answer.
     *
     * @throws RasputinTimeoutException if it times out again (retry that one in turn)
     * @throws RefusedException with server code 11 (SESSION_EXPIRED) once the
     *     cluster has forgotten the request's session: the outcome stays unknown
     */
    public RetryResult retry(RasputinTimeoutException timedOut) {
        Objects.requireNonNull(timedOut, "timedOut");
        byte[] token = timedOut.retryToken();
        return withHandle(handle -> nativeRetry(handle, token));
    }

    /**
     * The keys from {@code start} (inclusive) to {@code end} (exclusive;
     * {@code null} or empty: no end) with their values, in key order. The
     * scan runs when iterated, a page at a time; see {@link Scan}.
     */
    public Scan scan(byte[] start, byte[] end) {
        return scan(start, end, -1);
    }

    /** As {@link #scan(byte[], byte[])}, with at most {@code limit} pairs (negative: no limit). */
    public Scan scan(byte[] start, byte[] end, long limit) {
        requireArgument(start, "start");
        byte[] bound = end == null || end.length == 0 ? null : end.clone();
        return new Scan(
                (from, wanted) -> withHandle(handle -> nativeScanPage(handle, from, bound, wanted)), start.clone(), limit);
    }

    /** The keys that start with {@code prefix}, with their values, in key order. */
    public Scan scanPrefix(byte[] prefix) {
        requireArgument(prefix, "prefix");
        return scan(prefix, prefixEnd(prefix));
    }

    /**
     * The status number of {@link InvalidArgumentException}: the C header's
     * RASPUTIN_ERROR_INVALID_ARGUMENT, which StatusNumbersTest checks.
     */
    static final int STATUS_INVALID_ARGUMENT = 2;

    /** Throws as the native calls do for a null array, before a scan is made. */
    private static void requireArgument(byte[] argument, String name) {
        if (argument == null) {
            throw new InvalidArgumentException(name + " must not be null", STATUS_INVALID_ARGUMENT, 0);
        }
    }

    /** The first key after every key that starts with {@code prefix}; {@code null} if none is. */
    static byte[] prefixEnd(byte[] prefix) {
        for (int last = prefix.length - 1; last >= 0; last--) {
            if (prefix[last] != (byte) 0xff) {
                byte[] end = java.util.Arrays.copyOf(prefix, last + 1);
                end[last]++;
                return end;
            }
        }
        return null;
    }

    /** Closes the connections. Idempotent; waits for calls in progress. */
    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            if (handle != 0) {
                nativeFree(handle);
                handle = 0;
            }
        } finally {
            lock.writeLock().unlock();
        }
    }

    /** Runs {@code call} on the live handle under the read lock, or throws if closed. */
    private <T> T withHandle(LongFunction<T> call) {
        lock.readLock().lock();
        try {
            if (handle == 0) {
                throw new ClientClosedException("the client is closed; create a new one", STATUS_CLOSED, 0);
            }
            return call.apply(handle);
        } finally {
            lock.readLock().unlock();
        }
    }

    private static native long nativeNew(String peers, int threads, long attemptMs, long operationMs);

    private static native void nativeFree(long handle);

    private static native void nativeSet(long handle, byte[] key, byte[] value);

    private static native byte[] nativeGet(long handle, byte[] key);

    private static native CasResult nativeCas(long handle, byte[] key, byte[] expected, byte[] newValue);

    private static native byte[] nativeDelete(long handle, byte[] key);

    private static native RetryResult nativeRetry(long handle, byte[] token);

    private static native ScanPage nativeScanPage(long handle, byte[] start, byte[] end, long limit);
}
