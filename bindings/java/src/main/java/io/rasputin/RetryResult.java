package io.rasputin;

import java.util.Arrays;

/** The answer of {@link RasputinClient#retry}: the retried operation's own. */
public final class RetryResult {
    private final boolean success;
    private final boolean found;
    private final byte[] value;

    public RetryResult(boolean success, boolean found, byte[] value) {
        this.success = success;
        this.found = found;
        this.value = value;
    }

    /** get: found; set: always; cas: swapped; delete: the key existed. */
    public boolean success() {
        return success;
    }

    /** Whether the key exists (for delete: existed). */
    public boolean found() {
        return found;
    }

    /** The operation's value, or {@code null} exactly when the key is missing. */
    public byte[] value() {
        return value == null ? null : Arrays.copyOf(value, value.length);
    }

    @Override
    public String toString() {
        return "RetryResult(success=" + success + ", found=" + found + ", value=" + Arrays.toString(value) + ")";
    }
}
