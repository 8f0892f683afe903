package io.rasputin;

/** The operation did not finish in time. A write may or may not have taken effect; retrying it is safe. */
public class RasputinTimeoutException extends RasputinException {
    public RasputinTimeoutException(String message, int code, int serverCode) {
        super(message, code, serverCode);
    }
}
