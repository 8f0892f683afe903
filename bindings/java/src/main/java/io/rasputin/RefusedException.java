package io.rasputin;

/** The server refused the request; {@link #serverCode()} says why. */
public class RefusedException extends RasputinException {
    public RefusedException(String message, int code, int serverCode) {
        super(message, code, serverCode);
    }
}
