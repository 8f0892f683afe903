package io.rasputin;

import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.function.BiFunction;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * The pairs of a scan in key order. Each {@link #iterator()} runs the scan
 * afresh, fetching a page at a time as it is read; each page is
 * linearizable, but a key written while the scan runs may or may not appear.
 * A failure to fetch a page is thrown from {@code hasNext} or {@code next}.
 */
public final class Scan implements Iterable<KeyValue> {
    /** Fetches the page from a start key, of at most so many pairs (0: a full page). */
    private final BiFunction<byte[], Long, ScanPage> fetch;
    private final byte[] start;
    private final long limit;

    Scan(BiFunction<byte[], Long, ScanPage> fetch, byte[] start, long limit) {
        this.fetch = fetch;
        this.start = start;
        this.limit = limit;
    }

    @Override
    public Iterator<KeyValue> iterator() {
        return new Pages();
    }

    /** The pairs as a sequential, ordered stream. */
    public Stream<KeyValue> stream() {
        int characteristics = Spliterator.ORDERED | Spliterator.NONNULL;
        return StreamSupport.stream(Spliterators.spliteratorUnknownSize(iterator(), characteristics), false);
    }

    private final class Pages implements Iterator<KeyValue> {
        private final ArrayDeque<KeyValue> page = new ArrayDeque<>();
        private byte[] next = start;
        /** Pairs still wanted; negative: no limit. */
        private long remaining = limit;

        @Override
        public boolean hasNext() {
            if (remaining == 0) {
                return false;
            }
            // A page may be empty and still resume (a range holding no key of the span).
            while (page.isEmpty() && next != null) {
                ScanPage fetched = fetch.apply(next, Math.max(remaining, 0));
                next = fetched.resume;
                for (int index = 0; index < fetched.keys.length; index++) {
                    page.add(new KeyValue(fetched.keys[index], fetched.values[index]));
                }
            }
            return !page.isEmpty();
        }

        @Override
        public KeyValue next() {
            if (!hasNext()) {
                throw new NoSuchElementException("the scan has no more pairs");
            }
            if (remaining > 0) {
                remaining--;
            }
            return page.poll();
        }
    }
}
