package io.rasputin;

import java.util.Arrays;

/**
 * The operation did not finish in time and may or may not have taken effect.
 *
 * <p>Pass this exception to {@link RasputinClient#retry} to send the same
 * request again under the same identity: it applies at most once, and its
 * result says what happened. Calling the operation again instead sends a new
 * request, which may apply a second time.
 */
public class RasputinTimeoutException extends RasputinException {
    private final byte[] retryToken;

    public RasputinTimeoutException(String message, int code, int serverCode, byte[] retryToken) {
        super(message, code, serverCode);
        this.retryToken = retryToken == null ? new byte[0] : retryToken.clone();
    }

    /** The timed-out request, for {@link RasputinClient#retry}. */
    public byte[] retryToken() {
        return Arrays.copyOf(retryToken, retryToken.length);
    }
}
