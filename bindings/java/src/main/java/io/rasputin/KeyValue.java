package io.rasputin;

import java.util.Arrays;

/** One key and its value, as a scan returns them. */
public final class KeyValue {
    private final byte[] key;
    private final byte[] value;

    public KeyValue(byte[] key, byte[] value) {
        this.key = key;
        this.value = value;
    }

    /** The key (a copy). */
    public byte[] key() {
        return Arrays.copyOf(key, key.length);
    }

    /** The value (a copy). */
    public byte[] value() {
        return Arrays.copyOf(value, value.length);
    }

    @Override
    public boolean equals(Object other) {
        return other instanceof KeyValue pair && Arrays.equals(key, pair.key) && Arrays.equals(value, pair.value);
    }

    @Override
    public int hashCode() {
        return 31 * Arrays.hashCode(key) + Arrays.hashCode(value);
    }

    @Override
    public String toString() {
        return "KeyValue(key=" + Arrays.toString(key) + ", value=" + Arrays.toString(value) + ")";
    }
}
