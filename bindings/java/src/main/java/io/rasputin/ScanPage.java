package io.rasputin;

/** One page of a scan, as the native library returns it; {@link Scan} walks the pages. */
final class ScanPage {
    final byte[][] keys;
    final byte[][] values;
    /** Where the next page starts, or {@code null} once the scan reached its end. */
    final byte[] resume;

    ScanPage(byte[][] keys, byte[][] values, byte[] resume) {
        this.keys = keys;
        this.values = values;
        this.resume = resume;
    }
}
