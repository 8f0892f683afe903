package io.rasputin;

/** A key or value exceeds the cluster's size limits. */
public class ValueTooLargeException extends RasputinException {
    public ValueTooLargeException(String message, int code, int serverCode) {
        super(message, code, serverCode);
    }
}
