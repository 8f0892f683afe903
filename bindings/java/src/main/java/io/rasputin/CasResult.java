package io.rasputin;

import java.util.Arrays;

/**
 * The outcome of {@link RasputinClient#cas}: whether the swap happened, and the
 * key's value after the call ({@code null} exactly when the key is missing; a
 * key holding the empty value gives an empty array).
 */
public final class CasResult {
    private final boolean success;
    private final byte[] value;

    public CasResult(boolean success, byte[] value) {
        this.success = success;
        this.value = value;
    }

    /** Whether the value matched and was replaced. */
    public boolean success() {
        return success;
    }

    /** The current value after the call, or {@code null} if the key is missing. */
    public byte[] value() {
        return value == null ? null : Arrays.copyOf(value, value.length);
    }

    @Override
    public String toString() {
        return "CasResult(success=" + success + ", value=" + Arrays.toString(value) + ")";
    }
}
