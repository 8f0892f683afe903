package io.rasputin;

/**
 * Base of every Rasputin error. {@link #code()} is the stable status number,
 * the same as librasputin's {@code rasputin_status}; {@link #serverCode()} is
 * the server's wire error code behind a {@link RefusedException}, else 0.
 */
public class RasputinException extends RuntimeException {
    private final int code;
    private final int serverCode;

    public RasputinException(String message, int code, int serverCode) {
        super(message);
        this.code = code;
        this.serverCode = serverCode;
    }

    /** The stable status number of this error. */
    public int code() {
        return code;
    }

    /** The server's wire error code, for refusals; otherwise 0. */
    public int serverCode() {
        return serverCode;
    }
}
